"""Fixtures for the policy tests: a real TUF repository on loopback HTTP and an agent home pinned to it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.config import AgentConfig
from agent.enrol import pin_tuf_root
from agent.policy import PolicyClient
from agent.policy_store import PolicyStore
from tests.agent.tufrepo import AREA, Repo, serve


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    return Repo(tmp_path / "repo")


@pytest.fixture
def url(repo: Repo) -> Iterator[str]:
    with serve(repo.base) as base_url:
        yield base_url


@pytest.fixture
def agent_config(tmp_path: Path, repo: Repo, url: str) -> AgentConfig:
    home = tmp_path / "agent"
    home.mkdir()
    config = AgentConfig(home=home, central_url=url, agent_id="H1-01", pooling_area=AREA)
    pin_tuf_root(config, repo.root_bytes())
    return config


@pytest.fixture
def store(agent_config: AgentConfig) -> Iterator[PolicyStore]:
    with PolicyStore(agent_config.policy_db_path) as s:
        yield s


@pytest.fixture
def client(agent_config: AgentConfig, store: PolicyStore) -> PolicyClient:
    return PolicyClient(agent_config, store)
