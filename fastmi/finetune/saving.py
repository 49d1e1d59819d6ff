"""Writing a fine-tuned model so that ``from_pretrained`` and ``fastmi extract`` read it back, and
the JSONL log of a run."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save as safetensors_bytes
from transformers import TrainerCallback

from fastmi.runtime.files import atomic_write_bytes

__all__ = ["save_tuned_model", "JsonlLogCallback"]


class JsonlLogCallback(TrainerCallback):
    """Appends every Trainer log line (with its step) to a JSONL file: a run can be watched, and
    the file survives a resumed run (new lines are appended)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            with self.path.open("a") as f:
                f.write(json.dumps({"step": state.global_step, **logs}) + "\n")


def save_tuned_model(model, tokenizer, out: Path, source: str, kind: str, lora: bool, merge: bool) -> None:
    """The adapter into OUT/adapter (LoRA), the full (merged) model and the tokenizer into OUT."""
    out = Path(out)
    if lora:
        model.save_pretrained(out / "adapter")
        if not merge:
            tokenizer.save_pretrained(out / "adapter")
            return
        model = model.merge_and_unload()
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if kind == "encoder":
        _carry_base_only_weights(out, source, model)


def _carry_base_only_weights(out: Path, source: str, model) -> None:
    """Copy weights the base model has but the LM-head model drops (BERT's pooler) into OUT.

    ``BertForMaskedLM`` is built without the pooler, so its checkpoint alone would leave
    ``AutoModel.from_pretrained(OUT)`` (what ``fastmi extract`` loads) with a random pooler, which
    fastmi refuses.  The pooler is not trained here, so the base model's own weights are exact.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    source_dir = Path(source)
    target = out / "model.safetensors"
    if not source_dir.is_dir() or not target.is_file():
        return
    prefix = getattr(model, "base_model_prefix", "")
    tensors = load_file(str(target))
    added = {}
    for path in sorted(source_dir.glob("*.safetensors")):
        with safe_open(str(path), "pt") as handle:
            for key in handle.keys():
                bare = key[len(prefix) + 1 :] if prefix and key.startswith(prefix + ".") else key
                if bare.startswith("pooler."):
                    full = f"{prefix}.{bare}" if prefix else bare
                    if full not in tensors:
                        added[full] = handle.get_tensor(key)
    if added:
        atomic_write_bytes(target, safetensors_bytes({**tensors, **added}, metadata={"format": "pt"}))
