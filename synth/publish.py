"""Publishing an output folder to the Hugging Face Hub as one dataset repository, card included.

What lands in the repository (what `datasets.load_dataset(repo_id, config)` and the Hub's viewer read):

    README.md                 the card; its YAML header declares the configs below
    data/train-*.parquet      config `default`: the training rows (anchor, positive, negative_1..k)
    details/train-*.parquet   config `details`: every column of the kept rows, same order
    dropped/train-*.parquet   config `dropped`: every removed row with step, rule, reason, evidence
    report.md, report.html, plots/, summary.json, recipe.yaml, dropped.jsonl

The Hub is reached through a two-method interface, `HubRepository`: `HfHubRepository` (huggingface_hub's
HfApi) is what users run; `LocalFolderRepository` records what would be uploaded in a local folder
(previews with `synth push --to-folder`, and the tests). The token comes only from an environment
variable and is never printed or written: messages name the variable, never its value.
"""

from __future__ import annotations

import fnmatch
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import yaml
from pydantic import field_validator, model_validator

from synth.export import MARKER
from synth.redact import looks_like_secret, redact_text
from synth.specs import Strict

DEFAULT_TOKEN_ENV = "HF_TOKEN"
MAX_SHARD_BYTES = 256 << 20  # Arrow bytes per parquet file; the Hub prefers files well under 1 GB
CONFIG_FOLDERS = {"default": "data", "details": "details", "dropped": "dropped"}  # config -> repository folder
REPORT_FILES = ("report.md", "report.html", "summary.json", "recipe.yaml", "dropped.jsonl")
# Re-pushing replaces what an earlier push of synth put there (shard counts may change); nothing else.
OWNED_PATTERNS = ["data/*", "details/*", "dropped/*", "plots/*"]
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class PushError(ValueError):
    """A push that cannot happen or failed: one line for the user, never the token."""


def check_repo_id(repo_id: str) -> str:
    if not _REPO_ID.fullmatch(repo_id or "") or ".." in repo_id or "--" in repo_id or repo_id.endswith("."):
        raise PushError(f"repository id {repo_id!r}: must be OWNER/NAME (letters, digits, '-', '_', '.')")
    return repo_id


def check_token_env(name: str) -> str:
    """`name` if it is an environment variable's NAME; a pasted token is refused without being repeated."""
    if looks_like_secret(name):
        raise PushError("token_env takes the NAME of an environment variable (e.g. HF_TOKEN), not a token")
    if not _ENV_NAME.fullmatch(name):
        raise PushError(f"token_env {name!r}: not an environment variable name")
    return name


def token_from_env(name: str = DEFAULT_TOKEN_ENV, environ: Mapping[str, str] = os.environ) -> str:
    """The Hub token from the environment variable `name`; missing = one clear line."""
    value = environ.get(check_token_env(name), "").strip()
    if not value:
        raise PushError(
            f"no Hugging Face token: the environment variable {name} is not set "
            f"(create a write token at https://huggingface.co/settings/tokens and export {name}=...)"
        )
    return value


class PushSpec(Strict):
    """`output.push_to_hub` in a recipe: publish the output after each successful run.

    Written as `push_to_hub: OWNER/NAME` or `push_to_hub: {repo_id: OWNER/NAME, private: true, token_env: MY_TOKEN}`.
    """

    repo_id: str
    private: bool = False
    token_env: str = DEFAULT_TOKEN_ENV  # the NAME of the variable holding the token, never the token

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, value: Any) -> Any:
        return {"repo_id": value} if isinstance(value, str) else value

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, value: str) -> str:
        return check_repo_id(value)

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str) -> str:
        return check_token_env(value)


class HubRepository(Protocol):
    """The two Hub calls a push needs."""

    def create_repo(self, repo_id: str, *, private: bool) -> str:
        """Create the dataset repository if it does not exist; return its URL."""
        ...

    def upload_folder(self, repo_id: str, folder: Path, *, commit_message: str, delete_patterns: list[str]) -> str:
        """One commit: delete the files matching `delete_patterns`, add every file of `folder`; return the commit's id."""
        ...


class HfHubRepository:
    """The real Hub through huggingface_hub's HfApi, with the token given (never the stored login)."""

    def __init__(self, token: str) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.constants import is_offline_mode

        if is_offline_mode():
            raise PushError("HF_HUB_OFFLINE is set: the Hugging Face Hub is switched off; unset it to push")
        self._token = token
        self.api = HfApi(token=token, library_name="synth")

    def _failed(self, what: str, error: Exception) -> PushError:
        detail = " ".join(str(error).split())[:400] or type(error).__name__
        return PushError(f"{what} failed: {redact_text(detail).replace(self._token, '***')}")

    def create_repo(self, repo_id: str, *, private: bool) -> str:
        try:
            url = self.api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        except Exception as e:  # HTTP, network, permissions: one line
            raise self._failed(f"creating the dataset repository {repo_id}", e) from None
        return str(url)

    def upload_folder(self, repo_id: str, folder: Path, *, commit_message: str, delete_patterns: list[str]) -> str:
        try:
            info = self.api.upload_folder(
                repo_id=repo_id,
                folder_path=folder,
                repo_type="dataset",
                commit_message=commit_message,
                delete_patterns=delete_patterns,
            )
        except Exception as e:
            raise self._failed(f"uploading to {repo_id}", e) from None
        return str(getattr(info, "oid", "") or getattr(info, "commit_url", ""))


class LocalFolderRepository:
    """A stand-in Hub in a local folder: `root/OWNER/NAME/` holds the files as the repository would.

    Each repository also keeps `.hub-repo.json` (its settings) and `.hub-commits.jsonl` (one record
    per upload: message, files added, files deleted), so what a push sent can be checked exactly.
    """

    SETTINGS = ".hub-repo.json"
    COMMITS = ".hub-commits.jsonl"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, repo_id: str) -> Path:
        return self.root / check_repo_id(repo_id)

    def create_repo(self, repo_id: str, *, private: bool) -> str:
        folder = self.path(repo_id)
        if not (folder / self.SETTINGS).is_file():  # like exist_ok=True: an existing repository keeps its settings
            folder.mkdir(parents=True, exist_ok=True)
            settings = {"repo_id": repo_id, "repo_type": "dataset", "private": private}
            (folder / self.SETTINGS).write_text(json.dumps(settings) + "\n", encoding="utf-8")
        return folder.resolve().as_uri()

    def files(self, repo_id: str) -> list[str]:
        """The repository's files (posix paths), without the bookkeeping files."""
        folder = self.path(repo_id)
        names = (p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        return sorted(n for n in names if n not in (self.SETTINGS, self.COMMITS))

    def commits(self, repo_id: str) -> list[dict[str, Any]]:
        log = self.path(repo_id) / self.COMMITS
        return [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()] if log.is_file() else []

    def upload_folder(self, repo_id: str, folder: Path, *, commit_message: str, delete_patterns: list[str]) -> str:
        repo = self.path(repo_id)
        if not (repo / self.SETTINGS).is_file():
            raise PushError(f"uploading to {repo_id} failed: no such repository (create it first)")
        added = sorted(p.relative_to(folder).as_posix() for p in Path(folder).rglob("*") if p.is_file())
        deleted = [
            n for n in self.files(repo_id) if n not in added and any(fnmatch.fnmatch(n, p) for p in delete_patterns)
        ]
        for name in deleted:
            (repo / name).unlink()
        for name in added:
            (repo / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(Path(folder) / name, repo / name)
        commit = {"message": commit_message, "added": added, "deleted": deleted}
        with (repo / self.COMMITS).open("a", encoding="utf-8") as f:
            f.write(json.dumps(commit) + "\n")
        return str(len(self.commits(repo_id)))


def _write_parquet(dataset: Any, folder: Path) -> None:
    """`folder/train-0000i-of-0000n.parquet`, as many files as keep each under MAX_SHARD_BYTES."""
    folder.mkdir(parents=True, exist_ok=True)
    shards = max(1, math.ceil(dataset.data.nbytes / MAX_SHARD_BYTES))
    for i in range(shards):
        part = dataset.shard(shards, i, contiguous=True) if shards > 1 else dataset
        part.to_parquet(str(folder / f"train-{i:05d}-of-{shards:05d}.parquet"))


def _front_matter(card: str) -> tuple[dict[str, Any], str]:
    """The card's YAML header (a dict) and its body."""
    if card.startswith("---\n"):
        end = card.find("\n---\n", 4)
        if end != -1:
            header = yaml.safe_load(card[4:end]) or {}
            if isinstance(header, dict):
                return header, card[end + len("\n---\n") :]
    return {}, card


def hub_card(card: str, repo_id: str, configs: list[str]) -> str:
    """The output's card for the Hub: `configs:` declared in its YAML header, and how to load each one."""
    header, body = _front_matter(card)
    header["configs"] = [
        {"config_name": name, "data_files": [{"split": "train", "path": f"{CONFIG_FOLDERS[name]}/train-*"}]}
        for name in configs
    ]
    comments = {
        "default": "anchor, positive, negative_1..k",
        "details": "every column",
        "dropped": "every removed row and why",
    }
    lines = []
    for name in configs:
        variable, config = ("train", "") if name == "default" else (name, f', "{name}"')
        lines.append(f'{variable} = load_dataset("{repo_id}"{config}, split="train")  # {comments[name]}')
    loads = "\n".join(lines)
    usage = f"## Load it from the Hub\n\n```python\nfrom datasets import load_dataset\n\n{loads}\n```\n\n"
    marker = "## Use it"
    body = body.replace(marker, usage + marker, 1) if marker in body else body.rstrip("\n") + "\n\n" + usage
    return "---\n" + yaml.safe_dump(header, sort_keys=False, allow_unicode=True) + "---\n" + body


def stage_upload(output: Path, folder: Path, repo_id: str) -> dict[str, int]:
    """Write into `folder` exactly what a push uploads; return the rows of each config it declares."""
    from datasets import load_from_disk

    output = Path(output)
    if not (output / MARKER).is_file():
        raise PushError(f"{output} is not an output folder written by `synth generate` (no {MARKER} file)")
    try:
        main = load_from_disk(str(output))
    except Exception as e:  # missing or damaged files: datasets raises many kinds
        raise PushError(f"{output}: the dataset cannot be read ({' '.join(str(e).split())[:200]})") from None
    if len(main) == 0:
        raise PushError(f"{output} has no training rows: nothing to publish")
    datasets = {"default": main}
    for name in ("details", "dropped"):  # an empty one is left out: a config without rows does not load
        if (output / name / "state.json").is_file() and len(part := load_from_disk(str(output / name))):
            datasets[name] = part
    for name, dataset in datasets.items():
        _write_parquet(dataset, folder / CONFIG_FOLDERS[name])
    for name in REPORT_FILES:
        if (output / name).is_file():
            (folder / name).write_text(redact_text((output / name).read_text(encoding="utf-8")), encoding="utf-8")
    if (output / "plots").is_dir():
        shutil.copytree(output / "plots", folder / "plots")
    card = (output / "README.md").read_text(encoding="utf-8") if (output / "README.md").is_file() else ""
    (folder / "README.md").write_text(hub_card(redact_text(card), repo_id, list(datasets)), encoding="utf-8")
    return {name: len(dataset) for name, dataset in datasets.items()}


def push_output(output: Path, repo_id: str, hub: HubRepository, *, private: bool = False) -> str:
    """Publish `output` (a folder `synth generate` wrote) as the dataset repository `repo_id`; return its URL."""
    check_repo_id(repo_id)
    with tempfile.TemporaryDirectory(prefix="synth-push-") as tmp:
        staged = Path(tmp)
        rows = stage_upload(Path(output), staged, repo_id)
        url = hub.create_repo(repo_id, private=private)
        message = f"synth: {Path(output).resolve().name} ({rows['default']} rows)"
        hub.upload_folder(repo_id, staged, commit_message=message, delete_patterns=OWNED_PATTERNS)
    return url


def hub_for(spec: PushSpec) -> HfHubRepository:
    """The real Hub for a recipe's `output.push_to_hub`; no token or HF_HUB_OFFLINE = PushError, before any work."""
    return HfHubRepository(token_from_env(spec.token_env))


def push_with_spec(output: Path, spec: PushSpec, hub: HubRepository | None = None) -> str:
    """A recipe's `output.push_to_hub` after its run: the output is already written, so a failure says how to retry."""
    try:
        return push_output(output, spec.repo_id, hub if hub is not None else hub_for(spec), private=spec.private)
    except PushError as e:
        retry = f"synth push {output} {spec.repo_id}" + (" --private" if spec.private else "")
        raise PushError(f"{e}; the output is written at {output}: push it again with `{retry}`") from None
