"""The `vikhr` command line: `vikhr run [-c demo|FILE]`, `vikhr status`, `vikhr config`, one command per stage."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vikhr.log import get_logger, setup_logging

log = get_logger("vikhr.cli")

EVAL_SUBCOMMANDS = ("tasks", "translate", "sbs")
"""`vikhr eval SUB ...` is `vikhr eval-SUB ...` (argparse cannot mix a subcommand with `eval MODEL...`)."""
SUBCOMMANDS = {
    ("corpus", "annotate"): "corpus-annotate", ("instruct", "build"): "instruct",
    ("instruct", "translate"): "instruct-translate", ("reward", "train"): "reward-train",
    ("reward", "score"): "reward-score", ("export", "gguf"): "export-gguf",
}  # fmt: skip
"""`vikhr A B ...` -> `vikhr C ...`: subcommands of a stage command (`vikhr instruct build` is the stage itself)."""


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        default="demo",
        help="experiment YAML, or a shipped config by name (demo, mistral-7b-ru); default: demo, the embedded "
        "default (SmolLM2-135M-Instruct -> Russian on the bundled text, on a CPU)",
    )
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. tokenizer.vocab_size=32000")


def _load(args):
    from vikhr.config import load_config

    cfg = load_config(args.config, args.overrides)
    setup_logging(cfg.log_level)
    return cfg


def cmd_config(args) -> int:
    from vikhr.config import dump_yaml

    sys.stdout.write(dump_yaml(_load(args)))
    return 0


def cmd_run(args) -> int:
    from vikhr import pipeline

    cfg = _load(args)
    steps = pipeline.run(cfg, args.start, args.stop, args.force or (), args.dry_run)
    if args.dry_run:
        for p in steps:
            sys.stdout.write(f"{p.name}\t{p.action}\t{p.reason}\n")
        from vikhr.compute import compute_plan, format_plan
        from vikhr.config import ConfigError, resolve_path

        try:
            plan = compute_plan(cfg, resolve_path(cfg, cfg.run_dir))
        except ConfigError as e:  # e.g. a vocabulary-only config without a model: nothing to plan on a GPU
            sys.stdout.write(f"\ncompute plan: not available ({e})\n")
        else:
            sys.stdout.write("\n" + format_plan(plan) + "\n")
    else:
        _print_status(pipeline.status(cfg))
        _print_outcome(cfg)
    return 0


def _print_outcome(cfg) -> None:
    """Where the report and the final model are, and the line that starts a chat with it."""
    from vikhr import pipeline

    rundir = pipeline.open_rundir(cfg)
    lines = []
    for name in ("report.html", "report.md"):
        if (rundir.stage_dir("report") / name).is_file():
            lines.append(f"report:  {rundir.stage_dir('report') / name}")
    final = next(
        (rundir.stage_dir(s) / "model" for s in ("sft", "pretrain", "transplant")
         if rundir.is_done(s) and (rundir.stage_dir(s) / "model" / "config.json").is_file()),
        None,
    )  # fmt: skip
    if final is not None:
        lines += [f"model:   {final}", f"chat:    vikhr chat {final}"]
    if lines:
        sys.stdout.write("\n" + "\n".join(lines) + "\n")


def cmd_stage(args) -> int:
    from vikhr import pipeline
    from vikhr.train.dist import is_main_process, under_launcher
    from vikhr.train.launch import launcher_config, relaunch

    if getattr(args, "launcher", None) and not under_launcher():
        launcher_config(args.launcher)  # an unknown name fails here, before anything starts
        argv = [args.stage, *(["-c", args.config] if args.config else []), *args.overrides]
        return relaunch(args.launcher, argv + (["--force"] if args.force else []), args.num_processes)
    cfg = _load(args)
    pipeline.run(cfg, args.stage, args.stage, [args.stage] if args.force else ())
    if is_main_process():
        _print_status([r for r in pipeline.status(cfg) if r["stage"] == args.stage])
    return 0


def cmd_corpus_annotate(args) -> int:
    """`vikhr corpus annotate -c FILE`: LLM judge on a sample of the corpus, then the quality classifier."""
    from vikhr import pipeline
    from vikhr.stages.corpus import annotate

    cfg = _load(args)
    summary = annotate(cfg, pipeline.open_rundir(cfg))
    sys.stdout.write(json.dumps(summary, indent=2, ensure_ascii=False, default=str) + "\n")
    return 0


def _print_status(rows: list[dict]) -> None:
    for r in rows:
        secs = f"{r['seconds']:.1f}s" if r["seconds"] is not None else "-"
        sys.stdout.write(f"{r['stage']:<12} {r['state']:<8} {secs:>8}  {r['dir']}\n")
        metrics = {k: v for k, v in r["metrics"].items() if k != "timings"}
        for k, v in metrics.items():
            sys.stdout.write(f"    {k}: {json.dumps(v, ensure_ascii=False)}\n")


def cmd_status(args) -> int:
    from vikhr import pipeline

    _print_status(pipeline.status(_load(args)))
    return 0


def cmd_tokenizer_report(args) -> int:
    from vikhr.tokenizer.report import default_texts, default_tokenizers, efficiency_report, write_report

    setup_logging("INFO")
    toks: dict[str, object] = {}
    for spec in args.tokenizers or []:
        name, _, path = spec.partition("=") if "=" in spec else (Path(spec).name or spec, "", spec)
        toks[name] = path
    if args.shared or not toks:
        toks.update(default_tokenizers())
    if not toks:
        raise SystemExit("no tokenizers given and no shared tokenizer folder found")
    if args.texts:
        texts = {}
        for spec in args.texts:
            lang, _, path = spec.partition("=")
            if not path or not Path(path).is_file():
                raise SystemExit(f"--texts expects LANG=FILE with an existing file, got {spec!r}")
            texts[lang] = [x for x in Path(path).read_text(encoding="utf-8").split("\n") if x.strip()]
    else:
        texts = default_texts()
    report = efficiency_report(toks, texts, example=args.example)
    files = write_report(report, Path(args.out))
    sys.stdout.write(files["markdown"].read_text(encoding="utf-8"))
    return 0


def cmd_bench_generate(args) -> int:
    from vikhr.eval.speed import compare, flores_texts, markdown_tables
    from vikhr.models import named_models, resolve_model

    setup_logging("INFO")
    models = {name: resolve_model(path) for name, path in named_models(args.model, "--model").items()}
    texts = flores_texts(args.prompts, args.chars, source=args.texts)
    result = compare(
        models, texts, repeats=args.repeats, warmup=args.warmup, free=args.free, seed=args.seed,
        temperature=args.temperature, dtype=args.dtype, device=args.device, threads=args.threads,
        interleave=args.interleave, free_chars=args.free_chars,
    )  # fmt: skip
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        log.info("results written to %s", out)
    sys.stdout.write(markdown_tables(result))
    return 0


def cmd_eval(args) -> int:
    """`vikhr eval MODEL... --tasks ...`: tasks, text, prompts and speed for any model folders, one report."""
    from vikhr.eval.harness import EvalSettings, run_evaluation, task_text
    from vikhr.eval.report import markdown
    from vikhr.models import named_models

    setup_logging("INFO")
    models = named_models(args.models, "MODEL")
    text = {}
    for spec in args.text or []:
        lang, _, path = spec.partition("=")
        if path.startswith("task:"):
            text[lang] = task_text(path.removeprefix("task:"), args.text_lines)
            continue
        if not path or not Path(path).is_file():
            raise SystemExit(f"--text expects LANG=FILE (an existing file) or LANG=task:TASK, got {spec!r}")
        lines = [x for x in Path(path).read_text(encoding="utf-8").split("\n") if x.strip()]
        text[lang] = lines[: args.text_lines] if args.text_lines else lines
    prompts: list[str] = []
    if args.prompts:
        from vikhr.eval.sbs import bundled_prompts, read_prompts

        prompts = bundled_prompts() if args.prompts == "bundled" else read_prompts(args.prompts)
    tasks = [t for spec in args.tasks or [] for t in spec.split(",") if t]
    settings = EvalSettings(
        tasks=tasks, limit=args.limit, batch_size=args.batch_size, dtype=args.dtype, device=args.device or "",
        max_length=args.max_length, chat=args.chat, text=text, prompts=prompts[: args.max_prompts or None],
        max_new_tokens=args.max_new_tokens, seed=args.seed, language=args.language, speed=args.speed,
    )  # fmt: skip
    report = run_evaluation(models, settings, Path(args.out))
    sys.stdout.write(markdown(report))
    sys.stdout.write(f"\nreport: {Path(args.out) / 'report.md'}\n")
    return 0


def cmd_eval_tasks(args) -> int:
    """`vikhr eval tasks [--export DIR]`: the shipped tasks, or lm-eval-ready copies of them."""
    from vikhr.eval.tasks import export_tasks, load_task, shipped_tasks

    setup_logging("INFO")
    if args.export:
        names = args.names or list(shipped_tasks())
        for path in export_tasks(names, Path(args.export)):
            sys.stdout.write(f"{path}\n")
        sys.stdout.write(f"run them in lm-eval with --include_path {args.export}\n")
        return 0
    for name, path in shipped_tasks().items():
        task = load_task(path)
        sys.stdout.write(f"{name:<12} {task.output_type:<16} {','.join(task.metrics):<24} {path}\n")
    return 0


def _add_eval_commands(sub) -> None:
    """`vikhr eval MODEL...`, `vikhr eval tasks`, `vikhr eval translate`, `vikhr eval sbs`."""
    p = sub.add_parser(
        "eval",
        help="evaluate model folders: lm-eval-format tasks, bits per char, side-by-side answers, purity, speed "
        "(also: vikhr eval tasks | translate | sbs)",
        description="Evaluate model folders the same way: lm-eval task YAML (same per-item predictions as lm-eval "
        "0.4.13), bits per char / byte, answers to prompts side by side with language purity, speed; one report "
        "(report.json / .md / .png, samples/). Subcommands: `vikhr eval tasks [--export DIR]`, `vikhr eval "
        "translate IN --out DIR`, `vikhr eval sbs NAME=MODEL ...` (each has --help).",
    )
    p.add_argument("models", nargs="+", help="model folders or aliases, optionally NAME=PATH")
    p.add_argument(
        "--tasks", action="append",
        help="comma-separated shipped task names (vikhr eval tasks) or lm-eval task YAML files (repeatable)",
    )  # fmt: skip
    p.add_argument("--limit", type=int, default=0, help="first N items of each task (0: all)")
    p.add_argument("--batch-size", type=int, default=8, help="items per forward pass")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    p.add_argument("--device", help="cpu, cuda, ... (default: cuda when available)")
    p.add_argument("--max-length", type=int, default=0, help="context length (0: the model's)")
    p.add_argument(
        "--text",
        nargs="*",
        help="LANG=FILE (one text per line) or LANG=task:TASK (each item's prompt + gold answer): bits per char / "
        "byte and perplexity",
    )
    p.add_argument("--text-lines", type=int, default=0, help="first N lines of each --text file (0: all)")
    p.add_argument(
        "--prompts", default="", help="a file of prompts (one per line) or `bundled`: side by side"
    )
    p.add_argument("--max-prompts", type=int, default=0, help="first N prompts (0: all)")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="prompts through the chat template (default: when the model has one)")  # fmt: skip
    p.add_argument("--language", default="ru", help="language of the prompts, for purity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", action=argparse.BooleanOptionalAction, default=False,
                   help="also measure forced-decoding speed (chars/s)")  # fmt: skip
    p.add_argument("--out", default="eval-report", help="output folder")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(
        "eval-tasks",
        prog="vikhr eval tasks",
        help="same as `vikhr eval tasks`: list the shipped tasks or export them",
    )
    p.add_argument("names", nargs="*", help="tasks to export (default: all shipped)")
    p.add_argument("--export", help="write lm-eval-ready copies (absolute data paths) into this folder")
    p.set_defaults(func=cmd_eval_tasks)

    from vikhr.eval.translate import add_translate_arguments

    p = sub.add_parser(
        "eval-translate",
        prog="vikhr eval translate",
        help="same as `vikhr eval translate`: an English multiple-choice set -> a Russian task",
    )
    add_translate_arguments(p)  # sets func=cmd_translate

    from vikhr.eval.sbs import add_sbs_arguments

    p = sub.add_parser(
        "eval-sbs",
        prog="vikhr eval sbs",
        help="same as `vikhr eval sbs`: answers of several models side by side",
    )
    add_sbs_arguments(p)  # sets func=cmd_sbs


def _add_instruct_commands(sub) -> None:
    """`vikhr instruct translate`, `vikhr reward train`, `vikhr reward score` (the stages are `vikhr instruct
    [build]`, `vikhr reward`, `vikhr sft`)."""
    from vikhr.instruct.reward import add_score_arguments, add_train_arguments
    from vikhr.instruct.translate import add_translate_arguments

    for name, prog, text, add in (
        ("instruct-translate", "vikhr instruct translate",
         "translate an English instruction set with any OpenAI-compatible endpoint (answers translated or "
         "generated in the target language)", add_translate_arguments),
        ("reward-train", "vikhr reward train", "fit a Bradley-Terry reward model on preference pairs",
         add_train_arguments),
        ("reward-score", "vikhr reward score", "score instruction examples with a trained reward model",
         add_score_arguments),
    ):  # fmt: skip
        p = sub.add_parser(name, prog=prog, help=f"same as `{prog}`: {text}", description=text)
        add(p)


def _add_bench_commands(sub) -> None:
    """`vikhr bench generate`: speed measurements."""
    bench = sub.add_parser("bench", help="speed measurements")
    bench = bench.add_subparsers(dest="bench_command", required=True)
    p = bench.add_parser(
        "generate", help="generation speed (tokens/s, Russian chars/s) of models on the same Russian text"
    )
    p.add_argument(
        "--model", action="append", required=True,
        help="NAME=PATH_OR_ALIAS (repeatable); the first is the baseline the ratios are taken against",
    )  # fmt: skip
    p.add_argument("--prompts", type=int, default=3, help="prompt + continuation pairs (FLORES devtest RU)")
    p.add_argument("--chars", type=int, default=300, help="characters of each continuation, at least")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats (the median is reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed passes before timing")
    p.add_argument(
        "--free", action=argparse.BooleanOptionalAction, default=True, help="also time free sampling"
    )
    p.add_argument(
        "--free-chars", type=int, help="free generation: characters per prompt (default: each continuation's)"
    )
    p.add_argument("--temperature", type=float, default=0.7, help="free generation: sampling temperature")
    p.add_argument("--seed", type=int, default=0, help="free generation: seed of the first text")
    p.add_argument("--texts", help="sentences to use instead of FLORES, one per line")
    p.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "float32", "bfloat16", "float16"],
        help="weights dtype (auto: vikhr.precision's choice for the device: bf16 only where it is native)",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument(
        "--interleave", action="store_true", help="load all models at once and alternate the repeats"
    )
    p.add_argument("--out", help="write the full results (raw timings included) to this JSON file")
    p.set_defaults(func=cmd_bench_generate)


def build_parser() -> argparse.ArgumentParser:
    from vikhr.stages import stage_names

    parser = argparse.ArgumentParser(prog="vikhr", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline, skipping finished stages whose inputs did not change")
    _add_config_args(p)
    p.add_argument("--from", dest="start", choices=stage_names(), help="first stage to run")
    p.add_argument("--to", dest="stop", choices=stage_names(), help="last stage to run")
    p.add_argument("--force", action="append", choices=stage_names(), help="rerun this stage (repeatable)")
    p.add_argument(
        "--dry-run", action="store_true",
        help="validate the config, print what would run and why and the compute plan (tokens, steps, FLOPs, "
        "GPU-hours, per-GPU memory); downloads and runs nothing",
    )  # fmt: skip
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("status", help="each stage's state and key metrics")
    _add_config_args(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("config", help="print the resolved config")
    _add_config_args(p)
    p.set_defaults(func=cmd_config)

    for name in stage_names():
        extra = {
            "corpus": " (`vikhr corpus annotate -c FILE`: LLM-judge a sample, train the quality classifier)",
            "instruct": " (= `vikhr instruct build`; also `vikhr instruct translate`)",
            "reward": " (also `vikhr reward train | score` outside a run)",
        }.get(name, "")
        p = sub.add_parser(name, help=f"run only the {name} stage{extra}")
        _add_config_args(p)
        p.add_argument("--force", action="store_true", help="rerun even if up to date")
        if name in ("pretrain", "sft"):
            from vikhr.train.launch import launcher_names

            p.add_argument(
                "--launcher",
                help=f"re-run under `accelerate launch` with the shipped vikhr/configs/accelerate/NAME.yaml ({', '.join(launcher_names())})"
                " or an accelerate config file",
            )
            p.add_argument("--num-processes", type=int, default=0, help="processes (GPUs) for --launcher")
        p.set_defaults(func=cmd_stage, stage=name)

    p = sub.add_parser("corpus-annotate", help="same as `vikhr corpus annotate`")
    _add_config_args(p)
    p.set_defaults(func=cmd_corpus_annotate)

    p = sub.add_parser("tokenizer-report", help="efficiency report for any tokenizers on parallel RU/EN text")
    p.add_argument("tokenizers", nargs="*", help="tokenizer folders or hub ids, optionally NAME=PATH")
    p.add_argument(
        "--shared", action="store_true", help="also compare the tokenizers in ../shared/data/tokenizers"
    )
    p.add_argument(
        "--texts", nargs="*", help="LANG=FILE, one line per sentence (default: FLORES devtest ru, en)"
    )
    p.add_argument(
        "--example", default="Машинное обучение изменяет мир", help="sentence shown split into pieces"
    )
    p.add_argument("--out", default="tokenizer-report", help="output folder")
    p.set_defaults(func=cmd_tokenizer_report)
    _add_bench_commands(sub)
    _add_eval_commands(sub)
    _add_instruct_commands(sub)

    from vikhr.serve.commands import add_commands

    add_commands(sub)

    from vikhr.merge import add_merge_command

    add_merge_command(sub)

    from vikhr.ablate import add_ablate_command
    from vikhr.export.gguf import add_export_command

    add_ablate_command(sub)
    add_export_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if tuple(argv[:2]) in SUBCOMMANDS:
        argv = [SUBCOMMANDS[tuple(argv[:2])], *argv[2:]]
    if argv[:1] == ["eval"] and argv[1:2] and argv[1] in EVAL_SUBCOMMANDS:
        argv = [f"eval-{argv[1]}", *argv[2:]]
    args = build_parser().parse_args(argv)
    from vikhr.config import ConfigError
    from vikhr.corpus.readers import InputError
    from vikhr.llm import LLMError
    from vikhr.tokenizer.spm import TokenizerTrainingError
    from vikhr.train import TrainingDiverged

    try:
        return args.func(args)
    except (
        ConfigError, InputError, TokenizerTrainingError, LLMError, FileNotFoundError, ImportError, ValueError,
        TrainingDiverged,
    ) as e:  # fmt: skip
        log.error("%s", e)
        sys.stderr.write(f"vikhr: error: {e}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
