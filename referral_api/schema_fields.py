"""Marshmallow fields shared by the request and response schemas of every blueprint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import marshmallow as ma


class AwareDateTime(ma.fields.AwareDateTime):
    """marshmallow's AwareDateTime (an offset is required), refusing an instant whose UTC
    time falls outside years 1 to 9999: `0001-01-01T00:00:00+14:00` is in year 0 in UTC,
    and converting it (to compare or to store it) overflowed, a 500."""

    default_error_messages = {"out_of_range": "Must be within years 0001 to 9999 in UTC."}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        try:
            moment.astimezone(UTC)
        except OverflowError:
            raise self.make_error("out_of_range") from None
        return moment
