"""Trying a model and watching its run: ``alexnet serve`` (a page and a JSON API) and ``alexnet runs``."""
