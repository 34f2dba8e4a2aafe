"""The FastAPI application: the same routers under /v1beta and /v1."""

from __future__ import annotations

import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI

from tunesmith.api import errors, openapi
from tunesmith.api.adapters import AdapterService
from tunesmith.api.auth import Credentials
from tunesmith.api.polling import PollPacer
from tunesmith.api.routes import (
    adapters,
    checkpoints,
    console,
    generate,
    models,
    operations,
    permissions,
    tuned_models,
)
from tunesmith.api.routes.metrics import metrics_public, metrics_router
from tunesmith.api.service import TuningService
from tunesmith.api.sharing import SharingService
from tunesmith.config import Settings
from tunesmith.domain.quotas import RateLimiter
from tunesmith.observability.generation import MeasuredEngine
from tunesmith.observability.http import RequestObserver
from tunesmith.observability.metrics import Metrics
from tunesmith.serving.engine import ServingLimits
from tunesmith.store.db import make_engine, migrate
from tunesmith.store.repository import Repository
from tunesmith.training.base_models import Catalog, load_base_model, torch_device

log = logging.getLogger(__name__)
VERSIONS = ("/v1beta", "/v1")


def create_app(settings: Settings) -> FastAPI:
    settings.make_data_dir()
    engine = make_engine(settings.sqlalchemy_url)
    migrate(engine)
    repo = Repository(engine)
    credentials = Credentials(settings, repo)
    if credentials.bootstrap():
        log.info("created the owner's API key in %s", credentials.owner_key_path)
    catalog = Catalog(settings)
    metrics = Metrics(repo)
    inference = MeasuredEngine(
        lambda spec: load_base_model(
            spec, settings.base_model_cache_dir, device=torch_device(settings.device)
        ),
        settings.adapter_cache_size,
        metrics.generation,
        ServingLimits(
            settings.serving_max_batch_rows,
            settings.serving_max_queued_requests,
            settings.serving_request_timeout_seconds,
        ),
    )

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        yield
        engine.dispose()

    app = FastAPI(
        title="Tunesmith",
        description="Self-hosted model tuning with the Gemini API tuning protocol.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.credentials = credentials
    app.state.service = TuningService(settings, repo, catalog, inference)
    app.state.sharing = SharingService(repo)
    app.state.adapters = AdapterService(settings, repo, catalog, app.state.service)
    app.state.rate_limiter = RateLimiter(settings.quota_requests_per_minute)
    app.state.poll_pacer = PollPacer()
    app.state.metrics = metrics
    app.add_middleware(RequestObserver, metrics=metrics.http)
    errors.install(app)
    openapi.install(app)
    app.include_router(metrics_router(metrics_public(settings)))
    app.include_router(console.router)
    # Routes with a ':verb' suffix come before the plain ones that would also match them.
    for prefix in VERSIONS:
        for module in (
            adapters,
            checkpoints,
            generate,
            permissions,
            operations,
            tuned_models,
            models,
        ):
            app.include_router(module.router, prefix=prefix)
    return app
