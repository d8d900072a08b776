"""Models: what the workers serve, and what they cannot and why."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from service.api.catalog import load_catalog
from service.api.deps import BrokerDep, SettingsDep, get_owner
from service.api.schemas import ModelList, error_responses

router = APIRouter(prefix="/v1", tags=["models"], dependencies=[Depends(get_owner)])


@router.get(
    "/models",
    operation_id="listModels",
    summary="Models and whether they serve",
    responses=error_responses(401, 403, 503),
)
async def list_models(broker: BrokerDep, settings: SettingsDep) -> ModelList:
    """Each model of the repository or of a live worker: serving, loading or absent.

    Built from the workers' heartbeats (the API never loads a model), so it shows what
    the fleet runs right now: name, version, backend, precision, device, tile geometry,
    readiness, and for an absent model the reason (for AFUNet without weights: where to
    put the checkpoint).
    """
    catalog = await load_catalog(broker, settings)
    return ModelList(
        default_model=catalog.default_model,
        workers=len(catalog.heartbeats),
        models=catalog.models(),
    )
