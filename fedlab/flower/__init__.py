"""The Flower adapter: the only package (with fedlab.sim's Flower runner) that imports flwr.

It turns fedlab's transport-free logic into a Message-API ``ServerApp`` and
``ClientApp``; it moves messages and converts records, nothing more.
"""
