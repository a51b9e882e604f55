"""Writes the JSON schema of one version of a CustomResourceDefinition: its openAPIV3Schema, without descriptions.

Usage: python deploy/k8s/schemas/from_crd.py CRD.yaml VERSION > KIND.json   (see README.md for the sources)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml


def without_descriptions(node: Any) -> Any:
    # A description is text for people; dropping it leaves the same checks in a tenth of the size. Only a schema's
    # own description goes: a property that happens to be named "description" stays.
    if isinstance(node, dict):
        return {
            key: (
                {name: without_descriptions(sub) for name, sub in value.items()}
                if key == "properties"
                else without_descriptions(value)
            )
            for key, value in node.items()
            if key != "description"
        }
    if isinstance(node, list):
        return [without_descriptions(item) for item in node]
    return node


def crd_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    (served,) = (v for v in crd["spec"]["versions"] if v["name"] == version)
    return {
        "$schema": "http://json-schema.org/draft-04/schema#",
        "title": f"{crd['spec']['group']}/{version} {crd['spec']['names']['kind']}",
        **without_descriptions(served["schema"]["openAPIV3Schema"]),
    }


if __name__ == "__main__":
    path, version = sys.argv[1:]
    (crd,) = (doc for doc in yaml.safe_load_all(Path(path).read_text()) if doc)
    json.dump(crd_schema(crd, version), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
