"""YAML as cnnlab reads and writes configs: safe, keys unique, numbers as YAML 1.2 reads them.

Example:
    yaml.load("learning_rate: 1e-3", Loader=YamlLoader)   # {"learning_rate": 0.001}
"""

from __future__ import annotations

import re

import yaml


class YamlLoader(yaml.SafeLoader):
    """YAML's safe loader, but a key written twice in one mapping is an error, not "last one wins",
    and numbers read as YAML 1.2 reads them.

    PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: `1e-3`, `5E4`,
    `-2E+2` and `+.5` stay strings there, and `learning_rate: 1e-3` would be refused as text.
    YAML 1.2 (and every JSON reader) takes them as numbers; so does cnnlab. A quoted '1e-3'
    stays a string.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice in the same mapping", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class YamlDumper(yaml.SafeDumper):
    """YAML's safe dumper, knowing the numbers `YamlLoader` reads: the string '1e-3' is quoted."""


# Only what YAML 1.1 misses: an exponent without a dot or without a sign, or a signed `.5`.
# Integers never match (no dot, no exponent), so `units: 10` stays an int.
_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?[eE][-+]?[0-9]+|\.[0-9]+(?:[eE][-+]?[0-9]+)?)$")
for _cls in (YamlLoader, YamlDumper):
    _cls.add_implicit_resolver("tag:yaml.org,2002:float", _YAML12_FLOAT, list("-+.0123456789"))
