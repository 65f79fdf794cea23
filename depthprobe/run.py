"""The main job: model and task in; scores, depths, figures and a manifest out."""

from __future__ import annotations

import dataclasses
import json
import logging
import platform
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from .capture.store import MANIFEST as STORE_MANIFEST
from .capture.store import STORE_DTYPES, ActivationStore, capture_to_store, inputs_sha256
from .depth import Cascade, DepthRule, cascade
from .methods import METHODS, MethodContext, behaviour_answers, behaviour_by_step, control_labels
from .methods.agreement import agreement_lines, depth_agreement
from .methods.base import get_method
from .methods.probe import check_probe_data
from .methods.probe_torch import PROBE_BACKENDS
from .methods.transformer_lens import as_loaded_model
from .models import (BUNDLED_MODELS, DEFAULT_MODEL, LoadedModel, check_model_name,
                     load_model)
from .models.looped import loop_model, parse_loop
from .plots import cascade_figure, write_figure, write_html
from .plots.tables import TOKENS_FILE, token_table
from .scores import write_table
from .tasks import Task, align_examples, get_task, make_task

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STORE_FOLDER = "activations"
DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


@dataclass
class RunConfig:
    """Settings of one run; ``depthprobe run`` builds this from its flags."""

    model: str = DEFAULT_MODEL
    """Bundled model name, local folder, GGUF file or hub id."""
    task: str = "shell-game"
    """Task name (see ``depthprobe tasks``)."""
    task_options: dict = field(default_factory=dict)
    """Task options, e.g. ``{"n_cups": 4}``; strings are converted to each option's type."""
    n_stories: int = 300
    """Number of stories (examples) the task generates."""
    n_steps: int | None = None
    """Updates per story (swaps for the shell game; None: the task's default of 8 swaps)."""
    seed: int = 0
    """Seed of the task generator, the folds' control labels and the bootstrap."""
    methods: tuple[str, ...] = ("probe",)
    """Scoring methods to run."""
    n_folds: int = 5
    """Cross-validation folds, grouped by story."""
    probe_c: float = 1.0
    """Inverse L2 regularisation strength of the probe's logistic regression."""
    probe_backend: str = "torch"
    """Probe implementation: torch (all layers and folds fitted at once) or sklearn."""
    depth_relative: float = 0.8
    """Depth threshold: fraction of the way from chance to the best layer."""
    depth_min_margin: float = 0.1
    """A step has a depth only if its best layer beats chance by this much."""
    depth_persist: int | None = 3
    """Layers that must stay at or above the threshold (None: all deeper layers)."""
    n_boot: int = 1000
    """Bootstrap resamples of stories for the depth and slope intervals."""
    batch_size: int = 8
    """Texts per forward pass."""
    dtype: str = "float32"
    """Model dtype: float32, bfloat16, float16 or auto."""
    device: str | None = None
    """Torch device, e.g. cpu or cuda:0 (default: where transformers puts the model)."""
    device_map: str | None = None
    """Spread the model over the GPUs with accelerate: auto, balanced, balanced_low_0 or
    sequential (default: no device map)."""
    output_dir: str = "depthprobe-runs/shell-game"
    """Folder for tables, figures and the manifest."""
    store_dir: str | None = None
    """Folder of the activation store (default: ``activations`` in the output folder)."""
    store_dtype: str = "float32"
    """Dtype of the stored residuals: float32, bfloat16 or float16."""
    shard_mb: float = 32.0
    """Size of one store shard in MB; a killed capture loses at most one shard of work."""
    resume: bool = False
    """Keep the verified shards of an interrupted run's store and capture only the rest."""
    overwrite: bool = False
    """Replace a folder that contains a run with different settings."""
    behaviour: bool = True
    """Ask the model for the state after each step and score its answers."""
    behaviour_stories: int | None = 100
    """Stories whose prefixes are put to the model (None: all); each costs a pass per step."""
    figures: tuple[str, ...] = ("html", "png")
    """Figure formats to write: html, png, svg, pdf."""
    progress: bool = True
    """Show progress bars."""
    loop: str | None = None
    """Repeat a block range, ``START:END:TIMES`` (e.g. ``10:14:2``), unrolled as layers."""

    def depth_rule(self) -> DepthRule:
        return DepthRule(relative=self.depth_relative, min_margin=self.depth_min_margin,
                         persist=self.depth_persist, n_boot=self.n_boot, seed=self.seed)

    def settings(self) -> dict:
        """Return the settings that define the results (not where or how they are shown)."""
        skip = {"output_dir", "overwrite", "progress", "figures", "store_dir", "resume"}
        if self.loop is None:
            skip.add("loop")  # runs without a loop keep the settings they had before it
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in skip}


def build_task(config: RunConfig) -> Task:
    """Build the configured task; the task's own options override the shared sizes."""
    task_class = get_task(config.task)
    options = {"n_stories": config.n_stories, "seed": config.seed}
    if config.n_steps is not None and task_class.steps_option:
        options[task_class.steps_option] = config.n_steps
    options.update(config.task_options)
    known = {o.name for o in task_class.options()}
    return make_task(config.task, **{k: v for k, v in options.items()
                                     if k in known or k in config.task_options})


def check_config(config: RunConfig) -> Task:
    """Validate every setting before any model loads; return the built task."""
    if config.n_steps is not None and config.n_steps < 1:
        raise ValueError(f"Steps must be 1 or more, got {config.n_steps}.")
    if config.n_stories < 1:
        raise ValueError(f"The number of stories must be 1 or more, got {config.n_stories}.")
    if not config.methods:
        raise ValueError("No method given; choose one or more of " + ", ".join(METHODS) + ".")
    for method in config.methods:
        get_method(method)
    bad_formats = [f for f in config.figures if f not in ("html", "png", "svg", "pdf")]
    if bad_formats:
        raise ValueError(f"Unknown figure formats {bad_formats}; choose html, png, svg, pdf.")
    check_model_name(config.model)
    if config.loop is not None:
        spec = parse_loop(config.loop)
        if config.model in BUNDLED_MODELS:  # other models' block counts are known once loaded
            spec.check(BUNDLED_MODELS[config.model].n_layers)
    config.depth_rule()
    _check_output_dir(config)
    _check_speed_options(config)
    task = build_task(config)
    _check_store(config, task)
    return task


def _check_speed_options(config: RunConfig) -> None:
    if config.store_dtype not in STORE_DTYPES:
        raise ValueError(f"Unknown store dtype {config.store_dtype!r}; choose one of "
                         f"{', '.join(STORE_DTYPES)}.")
    if config.probe_backend not in PROBE_BACKENDS:
        raise ValueError(f"Unknown probe backend {config.probe_backend!r}; choose one of "
                         f"{', '.join(PROBE_BACKENDS)}.")
    if config.shard_mb <= 0:
        raise ValueError(f"The shard size must be positive, got {config.shard_mb} MB.")
    if config.device_map is not None and config.device_map not in DEVICE_MAPS:
        raise ValueError(f"Unknown device map {config.device_map!r}; choose one of "
                         f"{', '.join(DEVICE_MAPS)}.")


def store_dir(config: RunConfig) -> Path:
    """Return the folder of a run's activation store."""
    return Path(config.store_dir) if config.store_dir else Path(config.output_dir) / STORE_FOLDER


def _check_store(config: RunConfig, task: Task) -> None:
    """Reject, before the model loads, a store folder that contains another model's or task's
    activations: with ``resume`` it cannot be resumed, and without it only ``overwrite``
    may replace it. The weight hash and token ids are checked once the model is loaded."""
    manifest = store_dir(config) / STORE_MANIFEST
    if not manifest.is_file() or (config.overwrite and not config.resume):
        return
    identity = json.loads(manifest.read_text()).get("identity", {})
    stored = (identity.get("model", {}).get("name"), identity.get("task"))
    requested = (config.model, json.loads(json.dumps(task.settings(), default=str)))
    if stored != requested:
        raise ValueError(
            f"The activation store at {store_dir(config)} contains residuals of model "
            f"{stored[0]!r} on task settings {stored[1]}, but this run uses model "
            f"{requested[0]!r} on {requested[1]}; choose another folder with --store, or "
            f"pass --overwrite (without --resume) to replace it.")


def _check_output_dir(config: RunConfig) -> None:
    manifest = Path(config.output_dir) / MANIFEST
    if config.overwrite or not manifest.is_file():
        return
    previous = json.loads(manifest.read_text()).get("settings")
    if previous != json.loads(json.dumps(config.settings())):
        raise ValueError(
            f"The output folder {config.output_dir} contains a run with different settings; "
            f"choose another folder with --output or pass --overwrite to replace it."
        )


def _versions() -> dict:
    names = ["depthprobe", "torch", "transformers", "scikit-learn", "numpy", "pandas", "plotly"]
    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


@dataclass
class RunResult:
    """Everything a run measured; shows a summary table and its figure in Jupyter."""

    config: RunConfig
    scores: pd.DataFrame
    readout_scores: pd.DataFrame
    cascades: dict[str, Cascade]
    behaviour: pd.DataFrame | None
    shortcuts: pd.DataFrame | None
    manifest: dict
    output_dir: Path | None = None

    @property
    def depths(self) -> pd.DataFrame:
        return pd.concat([c.table for c in self.cascades.values()], ignore_index=True)

    def figure(self, method: str = "probe"):
        """Return the cascade figure of one method as a plotly ``Figure``."""
        model = self.manifest.get("model", {})
        title = (f"{model.get('name', self.config.model)} · {self.config.task} · {method}: "
                 f"state resolution depth per step")
        return cascade_figure(self.scores, self.depths, self.behaviour, method=method,
                              title=title, n_layers=model.get("n_layers"),
                              layer_labels=model.get("layer_labels"))

    def summary_table(self) -> pd.DataFrame:
        """Return one row per step: depth with interval, best layer, behaviour, shortcuts."""
        table = self.depths[["method", "step", "depth", "depth_low", "depth_high",
                             "best_layer", "best_score", "chance"]].copy()
        if self.behaviour is not None:
            table = table.merge(self.behaviour[["step", "accuracy"]].rename(
                columns={"accuracy": "model_accuracy"}), on="step", how="left")
        return table

    def summary(self) -> str:
        """Return the short text summary that ``depthprobe run`` prints."""
        lines = []
        for method, result in self.cascades.items():
            loop = self.manifest["model"].get("loop")
            looped = f", blocks looped {loop}" if loop else ""
            lines.append(f"[{method}] resolution depth d(t) per step (layers 0..."
                         f"{self.manifest['model']['n_layers']}{looped}, 95% bootstrap "
                         f"interval):")
            for row in result.table.itertuples():
                if pd.isna(row.depth) and row.best_score - row.chance < result.rule.min_margin:
                    depth = "no depth (no layer beats chance by the margin)"
                elif pd.isna(row.depth):
                    span = ("all deeper layers" if result.rule.persist is None
                            else f"{result.rule.persist} consecutive layers")
                    depth = (f"no depth (no layer starts {span} at or above the "
                             f"threshold {row.threshold:.2f})")
                else:
                    depth = f"{int(row.depth):>2} [{row.depth_low:.0f}, {row.depth_high:.0f}]"
                    if "layer_labels" in self.manifest["model"]:
                        depth += f" = {self.manifest['model']['layer_labels'][int(row.depth)]}"
                behaviour = ""
                if self.behaviour is not None:
                    match = self.behaviour[self.behaviour["step"] == row.step]
                    if not match.empty:
                        behaviour = f"   model accuracy {match['accuracy'].iloc[0]:.2f}"
                lines.append(f"  step {row.step:>2}: d = {depth}   best layer "
                             f"{row.best_layer} ({row.best_score:.2f} vs chance "
                             f"{row.chance:.2f}){behaviour}")
            lines.append(f"  cascade slope: {result.slope:.2f} layers/step "
                         f"[{result.slope_low:.2f}, {result.slope_high:.2f}]")
            exhaustion = ("none within the steps run" if result.exhaustion_step is None
                          else f"step {result.exhaustion_step}")
            lines.append(f"  exhaustion step: {exhaustion}")
        if "agreement" in self.manifest:
            lines.extend(agreement_lines(self.manifest["agreement"]))
        if self.behaviour is not None:
            chance = self.behaviour["chance"].iloc[0]
            lines.append(f"model accuracy per step (chance {chance:.2f}): " + ", ".join(
                f"{r.step}: {r.accuracy:.2f}" for r in self.behaviour.itertuples()))
        if self.output_dir is not None:
            lines.append(f"outputs in {self.output_dir}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        table = self.summary_table().to_html(index=False, float_format=lambda v: f"{v:.2f}")
        # plotly.js is embedded (about 4.7 MB), because a CDN link shows nothing offline.
        figure = self.figure().to_html(full_html=False, include_plotlyjs=True)
        return f"<h4>depthprobe run: {self.config.task} on {self.config.model}</h4>{table}{figure}"


def _loop_record(loaded: LoadedModel) -> dict:
    """Return the manifest entries of a looped model: its loop and each layer's label."""
    layout = loaded.layout
    if not layout.is_looped:
        return {}
    return {"loop": getattr(loaded.model.config, "depthprobe_loop", None),
            "block_sources": [list(source) for source in layout.block_sources],
            "layer_labels": [layout.layer_label(layer) for layer in range(layout.n_layers + 1)]}


def _shortcut_table(task: Task, examples) -> pd.DataFrame | None:
    rows = []
    for example in examples:
        guesses = task.shortcuts(example)
        for rule, labels in guesses.items():
            for readout, guess in zip(example.readouts, labels):
                if guess is not None:
                    rows.append(dict(rule=rule, step=readout.step,
                                     correct=guess == readout.label))
    if not rows:
        return None
    frame = pd.DataFrame(rows)
    return frame.groupby(["rule", "step"])["correct"].agg(
        accuracy="mean", count="size").reset_index()


def run(config: RunConfig | None = None, model: LoadedModel | None = None, **overrides
        ) -> RunResult:
    """Run the main job and write its outputs; return a :class:`RunResult`.

    Pass ``model`` (a :class:`LoadedModel` or a TransformerLens ``TransformerBridge``) to
    reuse an already loaded model (its name must match ``config.model`` for the manifest
    to be right). Keyword overrides update ``config``.
    """
    config = dataclasses.replace(config or RunConfig(), **overrides)
    timings = {}
    started = time.perf_counter()

    task = check_config(config)
    text_examples = task.text_examples()
    labels = np.array([r.label for ex in text_examples for r in ex.readouts])
    steps = np.array([r.step for ex in text_examples for r in ex.readouts])
    groups = np.array([ex.group for ex in text_examples for r in ex.readouts])
    check_probe_data(labels, steps, groups, config.n_folds)
    out_dir = Path(config.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    timings["task"] = time.perf_counter() - started

    mark = time.perf_counter()
    loaded = (as_loaded_model(model) if model is not None
              else load_model(config.model, dtype=config.dtype, device=config.device,
                              device_map=config.device_map))
    if config.loop is not None:
        loaded = loop_model(loaded, config.loop)
    timings["load_model"] = time.perf_counter() - mark
    for method in config.methods:
        if get_method(method).needs_unembed:
            loaded.layout.require_unembed(method)
    manifest = {
        "settings": config.settings(),
        "task": task.settings(),
        "model": {"name": config.model, "weights_sha256": loaded.weights_hash,
                  "architecture": loaded.layout.architecture,
                  "n_layers": loaded.layout.n_layers, "d_model": loaded.layout.d_model,
                  "dtype": str(loaded.dtype).replace("torch.", ""),
                  **_loop_record(loaded)},
        "versions": _versions(),
        "timings_s": timings,
        "status": "running",
    }
    _write_manifest(out_dir, manifest)

    examples = align_examples(text_examples, loaded.tokenizer)
    write_table(token_table(examples, loaded.tokenizer, task.class_names),
                out_dir / TOKENS_FILE)
    features = None
    if any(get_method(m).needs_features for m in config.methods):
        features = _capture(config, loaded, task, examples, timings, manifest)

    keys = [(ex.input_ids[r.position], ex.input_ids[r.position - 1] if r.position else -1)
            for ex in examples for r in ex.readouts]
    context = MethodContext(
        task=task, loaded=loaded, text_examples=text_examples, examples=examples,
        features=features, layers=list(range(loaded.layout.n_layers + 1)), labels=labels,
        steps=steps, groups=groups,
        control=control_labels(keys, task.n_classes, seed=config.seed),
        n_folds=config.n_folds, batch_size=config.batch_size, seed=config.seed,
        progress=config.progress,
        options={"probe_c": config.probe_c, "probe_backend": config.probe_backend})
    scores, readout_scores, cascades = _score_methods(config, context, out_dir, timings)
    depths = pd.concat([c.table for c in cascades.values()], ignore_index=True)
    write_table(depths, out_dir / "depth.csv")
    if len(cascades) > 1:
        agreement = depth_agreement(cascades)
        write_table(agreement.table, out_dir / "agreement.csv")
        manifest["agreement"] = agreement.summary()

    behaviour = None
    if config.behaviour:
        asked = text_examples[: config.behaviour_stories]
        queries = [q for ex in asked for q in task.behaviour_queries(ex)]
        if queries:
            mark = time.perf_counter()
            answers = behaviour_answers(loaded.model, loaded.tokenizer, queries,
                                        batch_size=config.batch_size, progress=config.progress)
            behaviour = behaviour_by_step(answers, len(queries[0].choices))
            write_table(answers, out_dir / "behaviour_answers.csv")
            write_table(behaviour, out_dir / "behaviour.csv")
            timings["behaviour"] = time.perf_counter() - mark

    shortcuts = _shortcut_table(task, text_examples)
    if shortcuts is not None:
        write_table(shortcuts, out_dir / "shortcuts.csv")

    manifest["cascades"] = {m: c.summary() for m, c in cascades.items()}
    result = RunResult(config, scores, readout_scores, cascades, behaviour, shortcuts,
                       manifest, out_dir)

    mark = time.perf_counter()
    _write_figures(result, out_dir, config.figures)
    timings["figures"] = time.perf_counter() - mark
    timings["total"] = time.perf_counter() - started
    manifest["status"] = "complete"
    _write_manifest(out_dir, manifest)
    return result


def _capture(config: RunConfig, loaded: LoadedModel, task: Task, examples, timings: dict,
             manifest: dict) -> ActivationStore:
    """Stream the residuals of every layer at every readout into the activation store."""
    mark = time.perf_counter()
    sequences = [ex.input_ids for ex in examples]
    positions = [[r.position for r in ex.readouts] for ex in examples]
    identity = {
        "model": {"name": config.model, "weights_sha256": loaded.weights_hash,
                  "dtype": str(loaded.dtype).replace("torch.", ""),
                  **({"loop": config.loop} if config.loop is not None else {})},
        "task": task.settings(),
        "capture": {"batch_size": config.batch_size, "padding_side": "right",
                    "inputs_sha256": inputs_sha256(sequences, positions)},
    }
    store = ActivationStore.open_or_create(
        store_dir(config), identity, list(range(loaded.layout.n_layers + 1)),
        loaded.layout.d_model, [len(p) for p in positions], dtype=config.store_dtype,
        shard_mb=config.shard_mb, resume=config.resume)
    kept = len(store.finished_shards())
    capture_to_store(loaded.model, loaded.layout, sequences, positions, store,
                     batch_size=config.batch_size,
                     pad_token_id=loaded.tokenizer.pad_token_id or 0, progress=config.progress)
    manifest["store"] = {"folder": str(store.folder), "dtype": config.store_dtype,
                         "shards": len(store.shards), "shards_kept": kept}
    timings["capture"] = time.perf_counter() - mark
    return store


def _score_methods(config: RunConfig, context: MethodContext, out_dir: Path, timings: dict):
    """Run each method, write the combined tables after each one, and compute depths."""
    scores, readouts, cascades = [], [], {}
    for name in config.methods:
        spec = get_method(name)
        mark = time.perf_counter()
        method_scores, method_readouts = spec.score(context)
        timings[name] = time.perf_counter() - mark
        scores.append(method_scores)
        readouts.append(method_readouts)
        write_table(pd.concat(scores, ignore_index=True), out_dir / "scores.csv")
        write_table(pd.concat(readouts, ignore_index=True), out_dir / "readout_scores.csv")

        chance = method_scores.groupby("step")["chance"].first().to_dict()
        rule = dataclasses.replace(config.depth_rule(), **spec.depth_rule)
        cascades[name] = cascade(method_readouts, chance, name, rule)
    return (pd.concat(scores, ignore_index=True), pd.concat(readouts, ignore_index=True),
            cascades)


def _write_figures(result: RunResult, out_dir: Path, formats) -> None:
    for method in result.cascades:
        fig = result.figure(method)
        for fmt in formats:
            path = out_dir / f"cascade-{method}.{fmt}"
            if fmt == "html":
                write_html(fig, path)
                continue
            try:
                write_figure(fig, path)
            except RuntimeError as error:
                # Without a browser, write_figure writes the figure as HTML instead.
                logger.error("Could not write %s: %s", path, error)
                result.manifest.setdefault("errors", []).append(str(error))


def _write_manifest(out_dir: Path, manifest: dict) -> None:
    tmp = out_dir / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, default=str))
    tmp.replace(out_dir / MANIFEST)
