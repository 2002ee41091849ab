"""A fleet-level shed split into site obligations, and moved when a site stops answering (pure).

Each site offers what its last telemetry says a voluntary program may take (`flexible_kw`:
its planned interruptible and flexible load; protected and critical load is never offered).
A shed is split in proportion to those offers, each site at most its offer; what the offers
cannot cover is the portfolio's shortfall, stated at once. When a site fails (silent past the
deadline, or refusing its share), its share moves to the sites still answering, in proportion
to what each still offers (its flexible load left after its own share), each at most that.
The value of each site's flexibility (its bid curve) is not weighed yet: the split is by size.
"""

from __future__ import annotations

from collections.abc import Mapping, Set

__all__ = ["allocate", "reallocate"]

EPS_KW = 1e-6


def allocate(offers_kw: Mapping[str, float], shed_kw: float) -> tuple[dict[str, float], float]:
    """(each site's share, the shortfall) of `shed_kw` over sites offering `offers_kw`."""
    offers = {site: max(0.0, kw) for site, kw in offers_kw.items()}
    total_kw = sum(offers.values())
    if total_kw <= EPS_KW:
        return dict.fromkeys(offers, 0.0), shed_kw
    taken = min(1.0, shed_kw / total_kw)
    shares = {site: kw * taken for site, kw in offers.items()}
    return shares, max(0.0, shed_kw - total_kw)


def reallocate(shares: Mapping[str, float], failed: Set[str],
               left_kw: Mapping[str, float]) -> tuple[dict[str, float], float]:  # fmt: skip
    """New shares once `failed` sites' shares move to the others in proportion to `left_kw`
    (what each still offers beyond its share); (shares, the part no site could take)."""
    moving_kw = sum(kw for site, kw in shares.items() if site in failed)
    healthy = {site: max(0.0, left_kw.get(site, 0.0)) for site in shares if site not in failed}
    extra, unplaced_kw = allocate(healthy, moving_kw)
    new = {site: kw + extra.get(site, 0.0) for site, kw in shares.items() if site not in failed}
    new |= dict.fromkeys(failed & shares.keys(), 0.0)
    return new, unplaced_kw
