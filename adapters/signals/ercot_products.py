"""The three ERCOT price reports we read, as data: Public API endpoint, MIS report type, labels.

Sources: ERCOT's Public API OpenAPI spec (pubapi-apim-api.json) and the MIS report catalogue
(report type ids as listed in gridstatus and ERCOT's data product pages).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, time

from adapters.signals.ercot_normalize import Market

__all__ = ["PRODUCTS", "ErcotProduct"]


@dataclass(frozen=True, slots=True)
class ErcotProduct:
    market: Market
    emil_id: str
    api_path: str  # under https://api.ercot.com/api/public-reports
    mis_report_type_id: int
    mis_kept_days: int  # how far back the MIS document list reaches
    publication_every_s: int  # ERCOT's posting rhythm for the report
    date_from_param: str
    date_to_param: str

    def date_params(self, first_day: date, last_day: date) -> dict[str, str]:
        """Query parameters that select operating days first_day..last_day (inclusive)."""
        if self.market == "sced5":  # filtered by SCED timestamp, local time
            return {
                self.date_from_param: datetime.combine(first_day, time(0)).isoformat(),
                self.date_to_param: datetime.combine(last_day, time(23, 59, 59)).isoformat(),
            }
        return {
            self.date_from_param: first_day.isoformat(),
            self.date_to_param: last_day.isoformat(),
        }


PRODUCTS: dict[str, ErcotProduct] = {
    "rt15": ErcotProduct(
        "rt15",
        "NP6-905-CD",
        "/np6-905-cd/spp_node_zone_hub",
        12301,
        7,
        15 * 60,
        "deliveryDateFrom",
        "deliveryDateTo",
    ),
    "sced5": ErcotProduct(
        "sced5",
        "NP6-788-CD",
        "/np6-788-cd/lmp_node_zone_hub",
        12300,
        5,
        5 * 60,
        "SCEDTimestampFrom",
        "SCEDTimestampTo",
    ),
    "dam": ErcotProduct(
        "dam",
        "NP4-190-CD",
        "/np4-190-cd/dam_stlmnt_pnt_prices",
        12331,
        31,
        24 * 3600,
        "deliveryDateFrom",
        "deliveryDateTo",
    ),
}
