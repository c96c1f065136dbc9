"""The HTTP API's settings, read from `SWARM_API_*` environment variables."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

_MIB = 1024 * 1024


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SWARM_API_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    #: 0 picks a free port (uvicorn prints which).
    port: int = Field(default=8080, ge=0, le=65535)
    #: The bearer token every `/v1` request must carry; wins over `token_file`.
    token: SecretStr | None = None
    #: A file holding the token (what `swarm up` writes), read at start.
    token_file: Path | None = None
    #: Serve the OpenAPI document and the interactive docs (`/openapi.json`, `/docs`, `/redoc`)
    #: without the token. Off: they describe every route and model of the API, which is for
    #: the API's users, not for whoever reaches its port.
    public_docs: bool = False
    #: Identity stamped on the commands the API sends (CloudEvents extension `identity`).
    identity: str = Field(default="user:api", pattern=r"^(user|service):[A-Za-z0-9._@-]{1,64}$")
    #: How long a command request waits for its outcome unless it says `?timeout=`.
    command_timeout: float = Field(default=10.0, gt=0, le=300)
    #: The largest request body the API reads, in bytes (413 above it). The largest valid
    #: command, a deploy with a 256 KiB inline module (about 342 KiB in base64) and its spec,
    #: is well under the default; NATS' own payload limit (1 MiB by default) caps commands too.
    max_body_bytes: int = Field(default=4 * _MIB, ge=_MIB, le=1024 * _MIB)

    def bearer_token(self) -> str:
        """The configured token; refusing to start without one keeps the API from being open."""
        if self.token is not None and self.token.get_secret_value():
            return self.token.get_secret_value()
        if self.token_file is not None:
            text = self.token_file.read_text().strip()
            if text:
                return text
        raise ValueError("no API token: set SWARM_API_TOKEN or SWARM_API_TOKEN_FILE")
