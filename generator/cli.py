"""`bigsleep`: dream images from the command line, without Discord."""

from __future__ import annotations

import argparse
import re
import secrets
import sys
from dataclasses import replace
from pathlib import Path

from generator.protocol import (
    ALLOWED_SIZES,
    CLIP_MODELS,
    CLIP_PRECISIONS,
    DEFAULT_IMAGE_WEIGHT,
    MAX_IMAGE_PROMPTS,
    MAX_SEED,
    MODEL_KINDS,
    QUALITY_PRESETS,
    DreamSpec,
    ImagePrompt,
    SpecError,
)

EXIT_USAGE = 2
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130
CONFIG_HELP = "a settings file instead of config/default.toml + config/local.toml (the bot's: its own keys are passed over)"


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse prints the whole usage block on a bad option; one line that points at --help is friendlier."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


class DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows a default only where there is one to show and the help text does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default in (None, "", False) or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(prog="bigsleep", description="Dream images from text with BigSleep (BigGAN-deep + CLIP).")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=OneLineArgumentParser)
    dream = commands.add_parser(
        "dream",
        help="turn a text prompt into an image",
        description="Optimise BigGAN-deep's inputs until CLIP says the image matches the prompt.",
        formatter_class=DefaultsHelpFormatter,
    )
    defaults = DreamSpec(prompt="")
    dream.add_argument("prompt", nargs="?", default="", help="what to dream; separate several prompts with | (may be left out with --image)")
    dream.add_argument("--image", type=Path, action="append", default=None, metavar="PATH",
                       help=f"a picture the result should look like (PNG, JPEG, WebP); up to {MAX_IMAGE_PROMPTS}, each --image once")
    dream.add_argument("--image-weight", type=float, action="append", default=None, metavar="W",
                       help=f"how strongly the pictures pull, 1 = as one text prompt (default {DEFAULT_IMAGE_WEIGHT:g}): "
                            "once for all of them, or once per --image in the same order")
    dream.add_argument("--negative", default="", help="what to steer away from; separate several with |")
    dream.add_argument("--seed", type=_seed, default=None, help=f"0 to {MAX_SEED}; the same seed and settings give the same image (default: random, printed)")
    dream.add_argument("--preset", choices=sorted(QUALITY_PRESETS), default=None,
                       help="named steps/cutouts (and size for 'cpu'); explicit --steps/--cutouts/--size win")
    dream.add_argument("--steps", type=_positive_int, default=None, help=f"optimisation steps (default {defaults.steps})")
    dream.add_argument("--size", type=int, choices=ALLOWED_SIZES, default=None, help=f"image side in pixels (default {defaults.size})")
    dream.add_argument("--cutouts", type=_positive_int, default=None, help=f"random crops CLIP judges per step (default {defaults.cutouts})")
    dream.add_argument("--lr", type=float, default=defaults.learning_rate, help="Adam learning rate")
    dream.add_argument("--ema-decay", type=float, default=defaults.ema_decay, help="decay of the latent average the saved images are rendered from")
    dream.add_argument("--max-classes", type=_positive_int, default=None, help="limit each block to a soft mix of this many ImageNet classes")
    dream.add_argument("--class-temperature", type=float, default=defaults.class_temperature,
                       help="softmax temperature of the --max-classes picks (lower: sharper picks)")
    dream.add_argument("--center-bias", action="store_true", default=None,
                       help="crops gather around the centre of the image (default: the configured worker.center_bias)")
    dream.add_argument("--save-best", action="store_true", default=None,
                       help="keep the EMA image CLIP scores best (checked every 25 steps), not the last; prints its score "
                            "(default: the configured worker.save_best)")
    dream.add_argument("--clip-model", choices=CLIP_MODELS, default=None,
                       help="which CLIP judges (larger: finer, slower; default: the configured worker.clip_model)")
    dream.add_argument("--out", type=Path, default=None, help="output PNG (default: named after the prompt and seed)")
    dream.add_argument("--save-every", type=_positive_int, default=None, metavar="N", help="also save a snapshot every N steps, beside --out")
    dream.add_argument("--timelapse", type=Path, default=None, metavar="GIF", help="write an animated GIF of the snapshots (every 10 steps unless --save-every)")
    dream.add_argument("--models", choices=MODEL_KINDS, default=None,
                       help="'tiny': toy random models that check the setup; 'random': real-size random models (benchmarks); "
                            "both draw noise (default: the configured models, else full)")
    dream.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: the configured device, else auto)")
    dream.add_argument("--clip-precision", choices=CLIP_PRECISIONS, default=None,
                       help="CLIP's weight precision; auto is fp16 on CUDA and bf16 on CPU; BigGAN always runs fp32 "
                            "(default: the configured worker.clip_precision, else auto)")
    dream.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    dream.add_argument("--weights-dir", type=Path, default=None, help="a folder that already holds the weight files; the network is never used")
    dream.add_argument("--cache-dir", type=Path, default=None, help="where downloaded weights are kept (default: $BIGSLEEP_CACHE_DIR or the user cache)")
    dream.add_argument("--offline", action="store_true", help="never download; fail with instructions if weights are missing")
    dream.add_argument("--quiet", action="store_true", help="no progress bar")

    download = commands.add_parser(
        "download",
        help="fetch and verify the configured model weights ahead of time",
        description="Download every weight file the bot's configuration needs (CLIP, and BigGAN-deep for each of "
                    "worker.sizes), verify their SHA-256, and keep them in the cache, so that the first /imagine "
                    "does not wait on a download. Files already present are verified, not downloaded again.",
    )
    download.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    download.add_argument("--sizes", type=int, nargs="+", choices=ALLOWED_SIZES, metavar="SIZE",
                          help="BigGAN sizes to fetch instead of the configured worker.sizes (any of 128, 256, 512)")
    download.add_argument("--cache-dir", type=Path, default=None, help="where to keep the weights (default: $BIGSLEEP_CACHE_DIR or the user cache)")
    download.add_argument("--quiet", action="store_true", help="no progress bars")

    doctor = commands.add_parser(
        "doctor",
        help="check this machine for generating images, and say how to fix what is wrong",
        description="Check the generator's configuration, Python and torch, the GPU, the configured device and the "
                    "weights with their checksums; print OK, WARN or FAIL for each with a fix. Exits 1 when anything "
                    "FAILs. The bot's database and Discord token: `bigsleep-bot doctor`.",
    )
    doctor.add_argument("--config", type=Path, metavar="FILE", help=CONFIG_HELP)
    return parser


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number")
    return value


def _seed(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"seed {text!r} is not a whole number") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"seed must be between 0 and {MAX_SEED}")
    return value


def spec_from_args(args: argparse.Namespace) -> DreamSpec:
    preset = QUALITY_PRESETS.get(args.preset, {}) if args.preset else {}
    spec = DreamSpec(
        prompt=args.prompt,
        negative=args.negative,
        seed=args.seed if args.seed is not None else secrets.randbelow(2**31),
        learning_rate=args.lr,
        ema_decay=args.ema_decay,
        max_classes=args.max_classes,
        class_temperature=args.class_temperature,
        snapshot_every=args.save_every or (10 if args.timelapse else 0),
        image_prompts=image_prompts_from_args(args.image or [], args.image_weight or []),
        center_bias=bool(args.center_bias),
        save_best=bool(args.save_best),
    )
    spec = replace(spec, **preset)
    explicit = {name: value for name, value in (("steps", args.steps), ("size", args.size), ("cutouts", args.cutouts)) if value is not None}
    return replace(spec, **explicit).validate()


def image_prompts_from_args(paths: list[Path], weights: list[float]) -> tuple[ImagePrompt, ...]:
    """--image files with their --image-weight (one for all, or one each), their bytes read now."""
    if weights and not paths:
        raise SpecError("--image-weight needs an --image to weigh")
    if len(weights) not in (0, 1, len(paths)):
        raise SpecError(f"give --image-weight once (for every picture) or once per --image ({len(paths)}), not {len(weights)} times")
    weights = weights * len(paths) if len(weights) == 1 else weights or [DEFAULT_IMAGE_WEIGHT] * len(paths)
    prompts = []
    for path, weight in zip(paths, weights):
        try:
            data = path.read_bytes()
        except OSError as error:
            raise SpecError(f"--image {path}: cannot read it ({error.strerror or error})") from None
        prompts.append(ImagePrompt(key=str(path), weight=weight, png=data))
    return tuple(prompts)


def default_output_path(spec: DreamSpec) -> Path:
    words = re.sub(r"[^a-z0-9]+", "-", spec.prompt.lower()).strip("-")[:48] or "dream"
    return Path(f"{words}-{spec.seed}.png")


def run_dream(args: argparse.Namespace) -> int:
    from generator.settings import load_generator_settings
    from generator.tokens import check_prompt_lengths
    from generator.weights import WeightsSource

    spec = spec_from_args(args)
    check_prompt_lengths(spec.prompt, spec.negative)
    out = args.out or default_output_path(spec)
    if out.suffix.lower() != ".png":
        raise SpecError(f"--out must end in .png, not {out.name!r}")
    if args.timelapse is not None and args.timelapse.suffix.lower() != ".gif":
        raise SpecError(f"--timelapse must end in .gif, not {args.timelapse.name!r}")

    settings = load_generator_settings(args.config)
    spec = spec.with_changes(
        center_bias=settings.worker.center_bias if args.center_bias is None else args.center_bias,
        save_best=settings.worker.save_best if args.save_best is None else args.save_best,
    )
    source = WeightsSource.from_env()
    source = replace(
        source,
        cache_dir=args.cache_dir or source.cache_dir,
        local_dir=args.weights_dir or source.local_dir,
        offline=args.offline or source.offline,
    )

    # torch loads slowly; only after the options are known to be good.
    from tqdm import tqdm

    from generator.compiled import step_networks
    from generator.engine import dream
    from generator.models import (
        RANDOM_WARNING,
        TINY_WARNING,
        clip_dtype_for,
        load_models,
        prepare_process,
        resolve_device,
    )

    kind = args.models or settings.models
    if kind != "full":
        print(TINY_WARNING if kind == "tiny" else RANDOM_WARNING, file=sys.stderr)
    device = resolve_device(args.device or settings.device)
    prepare_process(device)
    clip_precision = args.clip_precision or settings.worker.clip_precision
    models = load_models(kind, [spec.size], device, clip_dtype_for(clip_precision, device), source,
                         clip_name=args.clip_model or settings.worker.clip_model)

    # Compiled (worker.compile; on CUDA by default) at the first step, or loaded from the weights cache.
    networks = step_networks(models, settings.worker.compile, source.cache_dir)
    snapshot_dir = out.with_name(out.stem + "-snapshots")
    steering = f"“{spec.prompt}”" if spec.prompt.strip() else f"toward {len(spec.image_prompts)} picture(s)"
    print(f"Dreaming {steering} at {spec.size} px, {spec.steps} steps, seed {spec.seed}, on {device}.", file=sys.stderr)
    with tqdm(total=spec.steps, unit="step", disable=args.quiet, file=sys.stderr) as bar:
        def on_step(report):
            bar.update(1)
            bar.set_postfix(loss=f"{report.loss:.2f}")
            if report.snapshot is not None and args.save_every:
                snapshot_dir.mkdir(parents=True, exist_ok=True)
                report.snapshot.save(snapshot_dir / f"step-{report.step:05d}.png")

        outcome = dream(models, spec, on_step=on_step, keep_snapshots=args.timelapse is not None, networks=networks)
    out.parent.mkdir(parents=True, exist_ok=True)
    outcome.image.save(out)
    print(f"Saved {out} ({outcome.wall_seconds:.1f} s).")
    if outcome.score is not None:
        print(f"The best-scored image came after step {outcome.score_step} (score {outcome.score:.4f}).")
    if args.timelapse is not None:
        args.timelapse.parent.mkdir(parents=True, exist_ok=True)
        args.timelapse.write_bytes(outcome.timelapse_gif())
        print(f"Saved {args.timelapse} ({len(outcome.snapshots)} frames).")
    return 0


def run_download(args: argparse.Namespace) -> int:
    from generator.settings import load_generator_settings
    from generator.weights import WeightsSource, ensure_files, files_for_sizes, weights_root

    settings = load_generator_settings(args.config)
    if args.sizes:
        sizes = tuple(dict.fromkeys(args.sizes))
    else:
        models, sizes = settings.models, settings.worker.sizes
        if models != "full":
            print(f"Nothing to download: the configuration says models = {models!r}, which needs no weights. "
                  "Set models = \"full\" for real images, or name sizes with --sizes to fetch them anyway.")
            return 0
    source = WeightsSource.from_env()  # a bad BIGSLEEP_OFFLINE raises SettingsError naming it
    source = replace(source, cache_dir=args.cache_dir or source.cache_dir, progress=not args.quiet)
    files = files_for_sizes(sizes, source.mirror, settings.worker.clip_model)
    where = weights_root(source)
    action = "Checking" if source.local_dir is not None or source.offline else "Fetching and verifying"
    print(f"{action} {len(files)} weight files for sizes {', '.join(map(str, sizes))} in {where}.", file=sys.stderr)
    paths = ensure_files(files, source)
    total = 0
    for key, path in paths.items():
        size = path.stat().st_size
        total += size
        print(f"  ok  {key}  ({size / 2**20:,.1f} MiB)")
    print(f"All {len(paths)} weight files are present and verified ({total / 2**20:,.0f} MiB in {where}).")
    return 0


def run_doctor(args: argparse.Namespace) -> int:
    from generator.doctor import diagnose, format_report

    findings = diagnose(args.config)
    print(format_report(findings))
    return EXIT_FAILED if any(finding.failed for finding in findings) else 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "doctor":
        return run_doctor(args)  # reports every problem itself; never raises for one
    from generator.settings import SettingsError
    from generator.weights import MissingWeightsError, WeightsDownloadError

    failures: tuple[type[Exception], ...] = (MissingWeightsError, WeightsDownloadError)
    if args.command == "dream":
        from generator.models import ModelLoadError  # imports torch: only for the command that needs it

        failures += (ModelLoadError,)
    try:
        if args.command == "dream":
            return run_dream(args)
        if args.command == "download":
            return run_download(args)
    except SettingsError as error:
        for line in str(error).splitlines():
            print(f"bigsleep {args.command}: {line}", file=sys.stderr)
        return EXIT_USAGE
    except SpecError as error:
        print(f"bigsleep {args.command}: {error}", file=sys.stderr)
        return EXIT_USAGE
    except failures as error:
        print(f"bigsleep {args.command}: {error}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("\nbigsleep: interrupted; nothing was saved.", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
