"""What an index run is asked to do (``IndexOptions``) and what it answers (``IndexResult``)."""

from typing import Literal

from pydantic import BaseModel, Field

from indexer.index.compute import DeviceChoice, Precision
from indexer.math.basis import BasisMode

VERSION = "0.1.0"


class IndexOptions(BaseModel):
    name: str | None = Field(None, description="model name; default: the folder name")
    top_k: int = Field(50, ge=1, le=1000, description="tokens kept per vector and side")
    basis: BasisMode = Field("folded", description="folded (TransformerLens-style) or raw")
    components: list[str] | None = Field(None, description="components to index; default: all")
    replace: bool = Field(False, description="re-index a checkpoint that is already in the store")
    chunk_mb: int | None = Field(None, ge=1, description="memory for one chunk of logits, in MiB "
                                 "(default 64 on the CPU, 1024 on CUDA)")
    device: DeviceChoice = Field("auto", description="cpu, cuda, or auto (CUDA when present)")
    precision: Precision = Field("fp32", description="fp32 (exact), or tf32/bf16 candidates rescored in fp32 (CUDA)")
    label: str | None = Field(None, description="checkpoint label; default: the folder name")
    step: int | None = Field(None, ge=0, description="training step; default: from the folder name or "
                             "trainer_state.json")
    vectors: bool = Field(True, description="store every projected vector (float32, as its basis reads it) and the "
                          "basis rows, so promoters/suppressors are exact for any token or direction; off for very "
                          "large models (answers then say exact: false where the top-k lists cannot decide)")
    head_maps: bool = Field(False, description="index attention heads as token maps: exact top OV/QK pairs, "
                            "SVD directions, and factors for row queries (needs attention components)")
    pair_vocab: str = Field("all", description="tokens head-map pairs may use: all, ascii, alnum, or a file")
    svd: int = Field(4, ge=1, le=64, description="singular directions kept per head map (with head_maps)")
    read_basis: Literal["unembedding", "embedding"] = Field(
        "unembedding", description="matrix that reads what reading vectors read: the unembedding or the "
        "input embedding (they differ in untied models such as Pythia and Llama)")
    executor: Literal["local", "ray"] = Field("local", description="where units are projected: in this process "
                                              "(local) or by a pool of Ray actors (ray); rows are written here")
    address: str | None = Field(None, description="Ray address with executor ray: auto, host:port or "
                                "ray://host:10001; default: start a local instance")
    ray_workers: int | None = Field(None, ge=1, description="Ray actors with executor ray; default: one per CPU "
                                    "of the cluster")
    revision: str | None = Field(None, description="with a Hugging Face model id: the cached revision (branch, tag "
                                 "or commit); default main. Nothing is downloaded")
    base: str | None = Field(None, description="with a PEFT/LoRA adapter folder: its base model (folder or cached "
                             "hub id); default: the base named in adapter_config.json")
    lora: Literal["merged", "delta"] = Field(
        "merged", description="with a LoRA adapter: index the merged weights W + s·B·A (merged) or the adapter's "
        "low-rank update s·B·A alone, as its own vectors (delta)")


class IndexResult(BaseModel):
    status: Literal["indexed", "unchanged"]
    model: str
    checkpoint: str
    content_hash: str
    n_vectors: int
    n_projections: int
    seconds: float
    message: str


class DictionaryOptions(BaseModel):
    """What ``lensdb index-dictionary`` is asked to do."""

    model: str = Field(..., description="the indexed model the dictionary belongs to")
    name: str | None = Field(None, description="dictionary name; default: from its folder")
    hook: str | None = Field(None, description="hook point, where the files name none (Gemma Scope) or to "
                             "override it, e.g. blocks.6.hook_resid_post")
    checkpoint: str | None = Field(None, description="checkpoint label of the model; default: its latest")
    replace: bool = Field(False, description="re-index a dictionary already in the store (same content or name)")
    chunk_mb: int | None = Field(None, ge=1, description="memory for one chunk of logits, in MiB")
    device: DeviceChoice = Field("auto", description="cpu, cuda, or auto (CUDA when present)")
    precision: Precision = Field("fp32", description="fp32 (exact), or tf32/bf16 candidates rescored in fp32")


class DictionaryResult(BaseModel):
    status: Literal["indexed", "unchanged"]
    model: str
    checkpoint: str
    dictionary: str
    content_hash: str
    n_latents: int
    n_vectors: int
    n_projections: int
    seconds: float
    message: str
