"""Shared fixtures: tiny checkpoints on disk and a store indexed from them (built once per session)."""

import shutil
from pathlib import Path

import pytest

from indexer import IndexOptions, index_checkpoint
from tests.tinymodels import TinyModel, save_bert, save_gpt2


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--device", default="cpu", choices=["cpu", "cuda"],
                     help="device the indexing tests project on (cuda where a GPU is present)")


@pytest.fixture(scope="session")
def device(request: pytest.FixtureRequest) -> str:
    return str(request.config.getoption("--device"))


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return save_gpt2(tmp_path_factory.mktemp("ckpt") / "tiny-gpt2")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> TinyModel:
    return save_bert(tmp_path_factory.mktemp("ckpt") / "tiny-bert")


@pytest.fixture(scope="session")
def indexed_store(tmp_path_factory: pytest.TempPathFactory, tiny_gpt2: TinyModel, tiny_bert: TinyModel,
                  device: str) -> Path:
    """A store holding both tiny models; tests copy it before anything that could write."""
    db = tmp_path_factory.mktemp("store") / "lens.duckdb"
    index_checkpoint(db, tiny_gpt2.path, IndexOptions(name="gpt2-tiny", device=device))
    index_checkpoint(db, tiny_bert.path, IndexOptions(name="bert-tiny", device=device))
    return db


@pytest.fixture
def store_copy(indexed_store: Path, tmp_path: Path) -> Path:
    dest = tmp_path / "lens.duckdb"
    shutil.copy(indexed_store, dest)
    return dest
