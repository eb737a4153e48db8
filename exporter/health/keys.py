"""The institution key: one bank, whichever aggregator reaches it.

The key is the institution's home-page domain (``chase.com``), else its normalised name
(``name:first-national-bank-of-omaha``); a mapping file overrides both. A domain that
several institutions of one aggregator share is no key (test data often says
``www.example.com``; an aggregator's own hosting domain says nothing about the bank), so those
institutions fall back to their names. Only ``www.`` is stripped from a host: reducing
``online.bank.com`` to ``bank.com`` needs the public-suffix list and gets ``co.uk`` wrong
without it, and a mapping file handles the rare bank that answers on two hosts.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import yaml
from pydantic import ConfigDict, RootModel, ValidationError, field_validator

NAME_PREFIX = "name:"
MAX_KEY = 128
_HOST_RE = re.compile(r"^(?=.{1,253}$)([a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{1,62}$")
_KEY_RE = re.compile(r"^[a-z0-9][a-z0-9._:-]{0,127}$")
_SUFFIXES = frozenset({"na", "n a", "inc", "corp", "corporation", "co", "llc", "ltd", "fsb",
                       "ssb", "plc"})


def normalise_domain(url: object) -> str | None:
    """``"https://WWW.Chase.com/personal"`` → ``"chase.com"``; None for anything that is not
    a public host name (empty, an IP address, ``localhost``, a bare word)."""
    if not isinstance(url, str) or not url.strip():
        return None
    text = url.strip()
    if "://" not in text:
        text = "//" + text
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    if not host:
        return None
    host = host.rstrip(".").lower()
    try:
        host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return None
    try:
        ipaddress.ip_address(host)
        return None
    except ValueError:
        pass
    if host.startswith("www."):
        host = host[4:]
    return host if _HOST_RE.match(host) else None


def normalise_name(name: object) -> str | None:
    """``"The First National Bank of Omaha, N.A."`` → ``"first-national-bank-of-omaha"``."""
    if not isinstance(name, str):
        return None
    text = unicodedata.normalize("NFKD", name)
    text = "".join(c for c in text if not unicodedata.combining(c)).lower()
    text = text.replace("&", " and ")
    words = re.sub(r"[^a-z0-9]+", " ", text).split()
    if words and words[0] == "the":
        words = words[1:]
    while len(words) > 1:
        if " ".join(words[-2:]) in _SUFFIXES:
            words = words[:-2]
        elif words[-1] in _SUFFIXES or words[-1] == "and":
            words = words[:-1]
        else:
            break
    slug = "-".join(words)[: MAX_KEY - len(NAME_PREFIX)].strip("-")
    return slug or None


@dataclass(frozen=True, slots=True)
class InstitutionRef:
    """What the key is computed from: one institution of one aggregator."""

    provider: str
    institution_id: str
    name: str
    home_url: str | None = None


class _Mapping(RootModel[dict[str, dict[str, str]]]):
    """``{provider: {institution_id: key}}``."""

    model_config = ConfigDict(strict=True)

    @field_validator("root")
    @classmethod
    def _keys_are_label_safe(cls, value: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        for provider, entries in value.items():
            for inst_id, key in entries.items():
                if not _KEY_RE.match(key):
                    raise ValueError(
                        f"{provider}.{inst_id}: key {key!r} must be lower case letters, digits "
                        "and . _ : - (at most 128)")
        return value


class KeyMappingError(ValueError):
    """The mapping file cannot be used; the message lists every problem."""


def load_key_mapping(path: Path | str | None) -> dict[tuple[str, str], str]:
    """Read ``{provider: {institution_id: key}}`` from YAML; ``{}`` without a path."""
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise KeyMappingError(f"{path}: {exc}") from exc
    if data is None:
        return {}
    if isinstance(data, dict):  # YAML reads unquoted numeric ids as ints; ids are strings
        data = {str(p): ({str(k): v for k, v in e.items()} if isinstance(e, dict) else e)
                for p, e in data.items()}
    try:
        parsed = _Mapping.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}"
            for e in exc.errors())
        raise KeyMappingError(f"{path}: {problems}") from exc
    return {(p, i): k for p, entries in parsed.root.items() for i, k in entries.items()}


def institution_keys(refs: Iterable[InstitutionRef],
                     mapping: dict[tuple[str, str], str] | None = None,
                     ) -> dict[tuple[str, str], str]:
    """(provider, institution_id) → key for every ref (the last ref of a pair wins)."""
    latest = {(r.provider, r.institution_id): r for r in refs}
    ids_per_domain: dict[tuple[str, str], set[str]] = defaultdict(set)
    domains: dict[tuple[str, str], str | None] = {}
    for pair, ref in latest.items():
        domain = normalise_domain(ref.home_url)
        domains[pair] = domain
        if domain:
            ids_per_domain[(ref.provider, domain)].add(ref.institution_id)
    keys: dict[tuple[str, str], str] = {}
    mapping = mapping or {}
    for pair, ref in latest.items():
        domain = domains[pair]
        if pair in mapping:
            keys[pair] = mapping[pair]
        elif domain and len(ids_per_domain[(ref.provider, domain)]) == 1:
            keys[pair] = domain
        else:
            keys[pair] = name_key(ref.name, ref.institution_id)
    return keys


def name_key(name: str, institution_id: str) -> str:
    """The fallback key: the normalised name, else the normalised id."""
    return NAME_PREFIX + (normalise_name(name) or normalise_name(institution_id) or "unnamed")
