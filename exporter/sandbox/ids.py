"""The sandbox's public ids and their way back to fleet indexes (no lookup tables).

Finicity: customer ``FINICITY_CUSTOMER_BASE + unit``, institution login
``FINICITY_LOGIN_BASE + connection``. MX: GUID-looking ids whose last group encodes the
index (``USR-…``, ``MBR-…``, ``INS-…``), so a lookup is a parse plus one hash.
"""

from __future__ import annotations

from exporter.sandbox.fleet import FINICITY_CUSTOMER_BASE, FINICITY_LOGIN_BASE, S_GUID, ProviderSim


def guid(sim: ProviderSim, prefix: str, kind: int, idx: int) -> str:
    """A stable GUID-looking id whose last group encodes ``idx`` (so lookups need no index)."""
    h = sim.h(S_GUID, kind, idx)
    return (f"{prefix}-{h >> 32 & 0xFFFFFFFF:08x}-{h >> 16 & 0xFFFF:04x}-{h & 0xFFFF:04x}-"
            f"{h >> 48 & 0xFFFF:04x}-{idx:012x}")


def guid_index(sim: ProviderSim, prefix: str, kind: int, value: str, limit: int) -> int | None:
    tail = value.rsplit("-", 1)[-1]
    try:
        idx = int(tail, 16)
    except ValueError:
        return None
    if 0 <= idx < limit and guid(sim, prefix, kind, idx) == value:
        return idx
    return None


def user_guid(sim: ProviderSim, idx: int) -> str:
    return guid(sim, "USR", 1, idx)


def member_guid(sim: ProviderSim, k: int) -> str:
    return guid(sim, "MBR", 2, k)


def institution_guid(sim: ProviderSim, rank: int) -> str:
    return guid(sim, "INS", 3, rank)


def user_index(sim: ProviderSim, value: str) -> int | None:
    return guid_index(sim, "USR", 1, value, sim.units)


def customer_id(unit: int) -> str:
    return str(FINICITY_CUSTOMER_BASE + unit)


def login_id(k: int) -> int:
    """Finicity ``institutionLoginId`` (an integer in account payloads)."""
    return FINICITY_LOGIN_BASE + k


def owner_id(sim: ProviderSim, k: int) -> str:
    """customerId (Finicity) or user_guid (MX) of connection ``k``."""
    unit = sim.conn_unit[k]
    return customer_id(unit) if sim.provider == "finicity" else user_guid(sim, unit)


def connection_id(sim: ProviderSim, k: int) -> str:
    """institutionLoginId (Finicity, as a string) or member_guid (MX) of connection ``k``."""
    return str(login_id(k)) if sim.provider == "finicity" else member_guid(sim, k)


def find_connection(sim: ProviderSim, owner: str, login: str) -> int | None:
    """Connection index of (customerId, institutionLoginId) / (user_guid, member_guid), or None
    when either is unknown or the login is not the owner's."""
    if sim.provider == "finicity":
        if not (owner.isdigit() and login.isdigit()):
            return None
        unit, k = int(owner) - FINICITY_CUSTOMER_BASE, int(login) - FINICITY_LOGIN_BASE
        if not 0 <= unit < sim.units:
            return None
    else:
        unit = user_index(sim, owner)
        k = guid_index(sim, "MBR", 2, login, sim.connections)
        if unit is None or k is None:
            return None
    if not sim.unit_conn_start[unit] <= k < sim.unit_conn_start[unit + 1]:
        return None
    return k
