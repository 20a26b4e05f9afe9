"""Reads the test vectors under tests/data."""
import json
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"


def load_json(name: str):
    with (DATA / name).open() as f:
        return json.load(f)


def wycheproof(name: str):
    """(group, test) pairs of a Wycheproof file, with hex fields decoded."""
    doc = load_json(f"wycheproof/{name}")
    cases = []
    for group in doc["testGroups"]:
        for t in group["tests"]:
            case = dict(t)
            for field in ("key", "iv", "aad", "msg", "ct", "tag"):
                case[field] = bytes.fromhex(t[field])
            cases.append(case)
    assert len(cases) == doc["numberOfTests"], f"{name}: read {len(cases)} of {doc['numberOfTests']}"
    return cases
