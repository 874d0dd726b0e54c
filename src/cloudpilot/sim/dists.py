"""Random distributions of a scenario (boot times, job durations), drawn in blocks with numpy.

A distribution is written ``{dist: lognormal, median: 600, sigma: 0.5, min: 60}``, or as a bare number for a fixed
value. ``min``/``max`` clip every draw.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

DistKind = Literal["fixed", "uniform", "exponential", "lognormal", "normal", "gamma"]

# Which parameters each kind needs (the others must be absent, so a typo is an error, not a silent default).
_PARAMS: dict[str, tuple[str, ...]] = {
    "fixed": ("value",),
    "uniform": ("low", "high"),
    "exponential": ("mean",),
    "lognormal": ("median", "sigma"),
    "normal": ("mean", "sd"),
    "gamma": ("mean", "shape"),
}


class Dist(BaseModel):
    """A distribution of non-negative values (seconds, shares)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    dist: DistKind = Field("fixed", description="fixed, uniform, exponential, lognormal, normal or gamma.")
    value: float | None = Field(None, ge=0, description="fixed: the value.")
    low: float | None = Field(None, ge=0, description="uniform: lower bound.")
    high: float | None = Field(None, ge=0, description="uniform: upper bound.")
    mean: float | None = Field(None, gt=0, description="exponential, normal, gamma: the mean.")
    median: float | None = Field(None, gt=0, description="lognormal: the median (exp of mu).")
    sigma: float | None = Field(None, ge=0, description="lognormal: sigma of the underlying normal.")
    sd: float | None = Field(None, ge=0, description="normal: standard deviation.")
    shape: float | None = Field(None, gt=0, description="gamma: shape k (1 is exponential).")
    min: float = Field(0.0, ge=0, description="Draws below are raised to this.")
    max: float | None = Field(None, ge=0, description="Draws above are cut to this.")

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, data: Any) -> Any:
        if isinstance(data, int | float) and not isinstance(data, bool):
            return {"dist": "fixed", "value": data}
        return data

    @model_validator(mode="after")
    def _params(self) -> Dist:
        needed = _PARAMS[self.dist]
        given = {k for ks in _PARAMS.values() for k in ks if getattr(self, k) is not None}
        missing = [k for k in needed if getattr(self, k) is None]
        if missing:
            raise ValueError(f"dist {self.dist} needs {', '.join(missing)}")
        extra = sorted(given - set(needed))
        if extra:
            raise ValueError(f"dist {self.dist} takes no {', '.join(extra)}")
        if self.dist == "uniform" and self.low is not None and self.high is not None and self.high < self.low:
            raise ValueError("uniform: high is below low")
        return self

    def mean_value(self) -> float:
        """The mean before clipping (for estimates and docs)."""
        if self.dist == "fixed":
            return float(self.value or 0.0)
        if self.dist == "uniform":
            return ((self.low or 0.0) + (self.high or 0.0)) / 2
        if self.dist == "lognormal":
            return float(self.median or 0.0) * math.exp((self.sigma or 0.0) ** 2 / 2)
        return float(self.mean or 0.0)

    def draw(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` draws as float64, clipped to [min, max]."""
        kind = self.dist
        if kind == "fixed":
            out = np.full(n, float(self.value or 0.0))
        elif kind == "uniform":
            out = rng.uniform(self.low, self.high, n)
        elif kind == "exponential":
            out = rng.exponential(self.mean, n)
        elif kind == "lognormal":
            out = rng.lognormal(math.log(self.median or 1.0), self.sigma, n)
        elif kind == "normal":
            out = rng.normal(self.mean, self.sd, n)
        else:
            shape = float(self.shape or 1.0)
            out = rng.gamma(shape, float(self.mean or 0.0) / shape, n)
        return np.clip(out, self.min, self.max if self.max is not None else np.inf)


def fixed(value: float) -> Dist:
    return Dist(dist="fixed", value=value)
