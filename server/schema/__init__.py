"""Noun definitions: the compact notation, typed nouns, and validators built from them."""

from .nouns import Field, Noun, Reverse, SchemaSet, Verb, load_schemas

__all__ = ["Field", "Noun", "Reverse", "SchemaSet", "Verb", "load_schemas"]
