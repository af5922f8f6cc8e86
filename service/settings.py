"""Every setting of `lensdb serve`, declared once with its help text.

Layered: defaults here → ``LENSDB_*`` environment variables → ``lensdb serve`` flags (generated from these
fields, so the help text lives only here).
"""

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LENSDB_")

    db: Path = Field(Path("lens.duckdb"), description="store file the service owns (created if missing)")
    host: str = Field("127.0.0.1", description="interface to listen on; anything but loopback needs a token")
    port: int = Field(8000, ge=0, le=65535, description="TCP port to listen on")
    sql_timeout_s: float = Field(10.0, gt=0, le=3600, description="seconds before a POST /sql query is stopped")
    sql_max_rows: int = Field(1000, ge=1, le=1_000_000, description="most rows POST /sql returns (truncated is "
                              "set beyond)")
    sql_max_bytes: int = Field(8 << 20, ge=1024, le=1 << 30, description="most bytes of JSON a POST /sql answer "
                               "holds (truncated is set beyond)")
    sql_rss_budget_mb: int = Field(1024, ge=16, le=1 << 20, description="a POST /sql query is stopped when this "
                                   "process grows by more than this many MiB while it runs")
    sql_workers: int = Field(2, ge=1, le=64, description="POST /sql queries run at once; as many more wait, "
                             "beyond that the answer is 503 with Retry-After")
    page_workers: int = Field(4, ge=1, le=64, description="HTML pages rendered at once; as many more wait, "
                              "beyond that the answer is 503 with Retry-After")
    page_limit: int = Field(200, ge=1, le=100_000, description="largest limit any list endpoint accepts")
    watch_every: str = Field("", description="re-scan registered models this often (30s, 10m, 2h) and index new "
                             "checkpoints through the job queue; empty: off")
    watch_settle_s: float = Field(60.0, ge=0, le=86400, description="the watcher indexes only folders whose "
                                  "files are at least this many seconds old")
    token: str = Field("", description="access token: when set, every request needs 'Authorization: Bearer "
                       "TOKEN' (pages: open one once with ?access_token=TOKEN); empty: off")
    warm: bool = Field(True, description="at start and after each index job, load what token lookups read into "
                       "memory in the background (vocabularies, token-sorted tables): lookups then skip first "
                       "reads; costs about 1 s and the store's size in memory per 100 M token rows")
    value_cache_mb: int | None = Field(None, ge=0, description="stored vectors held in memory (by warm, newest "
                                       "checkpoints first, and by direction scans) so exact answers and contrasts "
                                       "score them from memory; default: a quarter of the machine's memory")
    max_body_bytes: int = Field(1 << 20, ge=1, le=1 << 30, description="largest request body accepted, counted "
                                "as it is read (any transfer encoding); larger ones get 413")
    allow_dir: list[Path] = Field([], description="folder that POST /index, POST /sources and pair_vocab files "
                                  "may name, with everything in it (repeatable; env: a JSON list); besides these, "
                                  "only folders inside registered models' folders. Default: none")
    allowed_host: list[str] = Field([], description="Host header names accepted besides the listening address "
                                    "(repeatable; env: a JSON list; '*' for any). On loopback, localhost, "
                                    "127.0.0.1 and ::1 are accepted")
    index_device: Literal["auto", "cpu", "cuda"] = Field("auto", description="where index jobs project: cpu, cuda, "
                                                         "or auto (CUDA when present)")
    index_precision: Literal["fp32", "tf32", "bf16"] = Field("fp32", description="index jobs' GEMM precision: fp32 "
                                                             "(exact), or tf32/bf16 candidates rescored in fp32")
    index_executor: Literal["local", "ray"] = Field("local", description="where index jobs project units: in "
                                                    "this process (local) or on Ray (ray)")
    ray_address: str = Field("", description="with index_executor ray: the Ray cluster to use (auto, host:port, "
                             "ray://host:10001); empty: a local instance")
    ray_workers: int | None = Field(None, ge=1, le=65536, description="with index_executor ray: actors to start "
                                    "(default one per CPU of the cluster)")
    memory_limit: str = Field("", description="most memory DuckDB may take in the service, for every query "
                              "(POST /sql included) and write: a query past it that cannot spill is refused with a "
                              "problem and the service keeps answering (e.g. 4GB); empty: half of this machine's "
                              "memory")
    threads: int | None = Field(None, ge=1, description="DuckDB threads of the service; default: one per core")
    temp_directory: str = Field("", description="where DuckDB spills what does not fit in memory_limit; empty: "
                                "DB.tmp next to the store")
    max_temp_directory_size: str = Field("8GB", description="most spill space a query may use before it is "
                                         "refused")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def accepted_hosts(settings: Settings) -> frozenset[str] | None:
    """Host header names (lower case, no port) the service answers; None: any."""
    named = {h.strip().lower().rstrip(".") for h in settings.allowed_host if h.strip()}
    if "*" in named:
        return None
    if is_loopback(settings.host):
        named |= {"localhost", "127.0.0.1", "::1"}
    elif settings.host in ("0.0.0.0", "::", ""):
        if not named:
            return None  # every interface, no names configured: the token guards it (exposure_problem)
    else:
        named.add(settings.host.lower().strip("[]"))
    return frozenset(named)


def exposure_problem(settings: Settings) -> str | None:
    """Why these settings must not be served: a non-loopback address without a token; None when fine."""
    if is_loopback(settings.host) or settings.token:
        return None
    return (f"refusing to listen on {settings.host} without a token: anyone who can reach it could read the "
            "store and have the service index folders on this machine. Set --token (or LENSDB_TOKEN), or "
            "listen on 127.0.0.1.")
