"""``GET /tracks/{track_id}/content``: the editor's generated field values for a document."""

from __future__ import annotations

from typing import Any

from litestar import Request, get
from litestar.datastructures import State

from app.api.intake import TRACK_ID
from app.api.problems import ProblemError, problem_specs
from app.api.services import current_user, services
from app.domain.projections import TrackContent, fold_track


@get(
    "/tracks/{track_id:str}/content",
    tags=["tracks"],
    summary="Latest generated value per element and field of a track",
    responses=problem_specs(400),
)
async def track_content(
    request: Request[Any, Any, State], state: State, track_id: str
) -> TrackContent:
    """Projected from the caller's field requests in the track; empty when there are none."""
    if TRACK_ID.fullmatch(track_id) is None:
        raise ProblemError(
            400,
            "invalid_track_id",
            "track_id must be 1 to 128 letters, digits, '_', '.', ':' or '-'",
        )
    svc = services(state)
    events = await svc.log.track_fields(current_user(request), track_id)
    return fold_track(track_id, events)
