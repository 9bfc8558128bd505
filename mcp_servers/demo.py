"""The example MCP server: the current time in a zone, and a unit converter.

A seeded personality (``travel-planner``) uses it, and the tests start it for real, over stdio
(``python -m mcp_servers.demo``) and over streamable HTTP
(``python -m mcp_servers.demo --http --port 8765``, endpoint ``/mcp``). It keeps no state and
reaches nothing outside the process, so any deployment can run it.
"""

from __future__ import annotations

import argparse
import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

logger = logging.getLogger(__name__)

# Each unit as a factor of its dimension's base unit (metre, kilogram, litre, m/s).
_FACTORS: dict[str, tuple[str, float]] = {
    "mm": ("length", 0.001),
    "cm": ("length", 0.01),
    "m": ("length", 1.0),
    "km": ("length", 1000.0),
    "in": ("length", 0.0254),
    "ft": ("length", 0.3048),
    "yd": ("length", 0.9144),
    "mi": ("length", 1609.344),
    "g": ("mass", 0.001),
    "kg": ("mass", 1.0),
    "lb": ("mass", 0.45359237),
    "oz": ("mass", 0.028349523125),
    "ml": ("volume", 0.001),
    "l": ("volume", 1.0),
    "gal": ("volume", 3.785411784),
    "cup": ("volume", 0.2365882365),
    "km/h": ("speed", 1 / 3.6),
    "m/s": ("speed", 1.0),
    "mph": ("speed", 0.44704),
    "kn": ("speed", 0.514444),
}
_TEMPERATURES = {"c", "f", "k"}

server: MCPServer = MCPServer(
    "chatify-demo",
    instructions="Time in any IANA zone, and conversions between common units.",
    log_level="WARNING",  # stderr is the service's log: no banner per call
)


@server.tool(description="The current date and time in an IANA time zone, e.g. Europe/Lisbon.")
def current_time(zone: str) -> str:
    """ISO 8601 local time with its UTC offset and the zone's abbreviation."""
    try:
        tz = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        close = sorted(z for z in available_timezones() if zone.lower() in z.lower())[:5]
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ToolError(f"Unknown time zone {zone!r}{hint}") from exc
    now = datetime.now(UTC).astimezone(tz)
    return f"{now.isoformat(timespec='seconds')} ({now.tzname()}, {zone})"


@server.tool(
    description="Convert a value between units of length (mm cm m km in ft yd mi), mass "
    "(g kg lb oz), volume (ml l gal cup), speed (km/h m/s mph kn) or temperature (C F K)."
)
def convert_units(value: float, from_unit: str, to_unit: str) -> str:
    """The converted value, rounded to 6 significant digits."""
    source, target = from_unit.strip().lower(), to_unit.strip().lower()
    if source in _TEMPERATURES and target in _TEMPERATURES:
        result = _from_kelvin(_to_kelvin(value, source), target)
    elif source in _FACTORS and target in _FACTORS:
        (dimension, factor), (other, to_factor) = _FACTORS[source], _FACTORS[target]
        if dimension != other:
            raise ToolError(f"Cannot convert {dimension} ({from_unit}) to {other} ({to_unit})")
        result = value * factor / to_factor
    else:
        raise ToolError(f"Unknown unit pair {from_unit!r} -> {to_unit!r}")
    return f"{value:g} {from_unit} = {result:.6g} {to_unit}"


def _to_kelvin(value: float, unit: str) -> float:
    return {"c": value + 273.15, "f": (value - 32) * 5 / 9 + 273.15, "k": value}[unit]


def _from_kelvin(value: float, unit: str) -> float:
    return {"c": value - 273.15, "f": (value - 273.15) * 9 / 5 + 32, "k": value}[unit]


def main(argv: list[str] | None = None) -> None:
    """Serve over stdio (the default) or streamable HTTP (``--http``)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--http", action="store_true", help="serve streamable HTTP on /mcp")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args(argv)
    if args.http:
        server.run("streamable-http", host=args.host, port=args.port)
    else:
        server.run()


if __name__ == "__main__":
    main()
