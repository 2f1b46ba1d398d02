"""How the report writes a number in a table cell; "–" where a figure was not measured."""

from __future__ import annotations


def mb(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e6:.1f}"


def score(x: float | None) -> str:
    return "–" if x is None else f"{x:.4f}"


def ms(x: float | None) -> str:
    return "–" if x is None else f"{x:.2f}"


def gflops(n: int | None) -> str:
    return "–" if n is None else f"{n / 1e9:.3g}"


def ratio(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"
