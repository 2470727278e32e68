"""``ra-joints``: the command line of napari-ra-joints.

Each sub-command is a thin wrapper over a function of ``annotation_tools``; errors a user can
fix are printed as one line (``error: ...``) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from . import __version__


def _cmd_phantoms(args: argparse.Namespace) -> int:
    from .phantoms import generate_cohort

    if args.out.exists() and not args.out.is_dir():
        raise FileExistsError(f"--out {args.out} is an existing file, not a folder")
    if not 64 <= args.height <= MAX_PHANTOM_HEIGHT:
        raise ValueError(f"--height must be 64-{MAX_PHANTOM_HEIGHT} pixels, got {args.height}")
    if args.patients < 1 or args.us_pairs < 0:
        raise ValueError("--patients must be at least 1 and --us-pairs at least 0")

    info = generate_cohort(
        args.out,
        args.patients,
        args.seed,
        height=args.height,
        us_pairs=args.us_pairs,
        workers=args.workers,
        progress=not args.quiet,
        raters=not args.no_raters,
        **({"style": args.style} if args.style else {}),
    )
    print(
        f"wrote {info['radiographs']} radiographs and {info['ultrasound_pairs']} ultrasound pairs "
        f"of {info['patients']} phantom patients to {args.out} in {info['seconds']:.1f} s"
    )
    return 0


def _cmd_bundles(args: argparse.Namespace) -> int:
    """Where the bundles are and whether each can predict (the folder to hand to
    ``python -m monai.bundle run --bundle_root``)."""
    from .bundles import bundles_dir, registry

    rows = []
    for info in registry().values():
        ready, reason = info.available()
        rows.append({"name": info.name, "task": info.task, "version": info.version,
                     "ready": ready, "status": reason, "root": str(info.root)})  # fmt: skip
    if args.json:
        print(json.dumps({"bundles_dir": str(bundles_dir()), "bundles": rows}, indent=2))
        return 0
    print(f"bundles in {bundles_dir()} (change with --bundles or RA_JOINTS_BUNDLES)")
    if not rows:
        print("  none found: a bundle is a folder with configs/metadata.json", file=sys.stderr)
    for row in rows:
        state = "ready" if row["ready"] else row["status"]
        print(f"  {row['task']:<10} {row['name']} {row['version']}: {state}\n    {row['root']}")
    return 0 if rows else 1


@contextlib.contextmanager
def _cancel_on_ctrl_c(what: str) -> Iterator[Any]:
    """A first Ctrl+C asks the job to stop after the current file (keeping what it did); a
    second one interrupts at once."""
    import signal

    from .progress import CancelToken

    token = CancelToken()

    def first(signum: int, frame: Any) -> None:
        token.cancel()
        print(f"cancelling the {what} after this file (Ctrl+C again to stop now)", file=sys.stderr)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield token
    finally:
        signal.signal(signal.SIGINT, previous)


def _cmd_import(args: argparse.Namespace) -> int:
    """Register a cohort's files in a project (created when missing); exit 3 when some were
    skipped (each is listed with its reason on stderr)."""
    from .intake import LIMB_THRESHOLD, describe, import_sources

    decide = None
    if args.decide_limbs:
        from .predict import PredictionService

        decide = PredictionService("two-stage", device=args.device)
        if decide.locator() is None:
            print("--decide-limbs: " + "; ".join(decide.skipped), file=sys.stderr)
            return 2
    with _cancel_on_ctrl_c("import") as cancel:
        report = import_sources(
            args.project,
            args.sources,
            cases=args.cases,
            decide=decide,
            limb_threshold=LIMB_THRESHOLD if args.limb_threshold is None else args.limb_threshold,
            cancel=cancel,
        )
    if args.json:
        print(json.dumps(report.to_json(), indent=2))
    else:
        print(describe(report))
    for item in report.skipped:
        print(f"skipped {item['path']}: {item['reason']}", file=sys.stderr)
    return report.exit_code


def _cmd_summary(args: argparse.Namespace) -> int:
    from .store import AnnotationStore

    with AnnotationStore.open(args.project, create=False) as store:
        summary = store.summary()
        rows = store.dream_rows()
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    print(f"project {Path(args.project).resolve()}")
    for key, value in summary.items():
        if key != "path":
            print(f"  {key.replace('_', ' ')}: {value}")
    totals = [r["Overall_Tol"] for r in rows if "Overall_Tol" in r]
    if totals:
        import numpy as np

        arr = np.asarray(totals, float)
        print(
            f"  Sharp/van der Heijde total over {len(arr)} complete patients: "
            f"median {np.median(arr):.0f}, range {arr.min():.0f}-{arr.max():.0f} (max 448)"
        )
    cohort = Path(args.project) / "cohort.json"
    if cohort.exists():
        print("  note: phantom data - figures measured on it are not clinical figures")
    return 0


def _cmd_export_dream(args: argparse.Namespace) -> int:
    from .store import AnnotationStore

    sources = None if args.all_sources else ("human", "phantom")
    with AnnotationStore.open(args.project, create=False) as store:
        if args.annotator:
            store.check_authors(args.annotator)
        path = store.export_dream_csv(args.out, sources=sources, authors=args.annotator)
    print(f"wrote {path}")
    return 0


def _cmd_agreement(args: argparse.Namespace) -> int:
    from .evaluation import agreement_lines, table_agreement

    result = table_agreement(args.a, args.b)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(agreement_lines(result))
    return 0


def _cmd_import_dream(args: argparse.Namespace) -> int:
    from .store import AnnotationStore, Provenance

    with AnnotationStore.open(args.project, create=False) as store:
        problems = store.import_dream_csv(args.csv, Provenance.human(args.annotator))
    for problem in problems:
        print(f"warning: {problem}", file=sys.stderr)
    print(f"imported {args.csv} ({len(problems)} problem(s))")
    return 1 if problems else 0


def _cmd_image_json(args: argparse.Namespace) -> int:
    """One image's annotations as the store's per-image JSON (an ultrasound image's with its
    pair), or such a file read back into a project as new revisions."""
    from .store import AnnotationStore

    with AnnotationStore.open(args.project, create=False) as store:
        if args.import_file:
            image_id = store.import_image_json(args.import_file)
            print(f"imported {args.import_file} into {store.image(image_id).path}")
            return 0
        record = store.find_image(args.image)
        if record is None:
            raise FileNotFoundError(f"{args.image} is not registered in {store.path}")
        data = store.export_image_json(record.id)
    text = json.dumps(data, indent=2)
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text)
    return 0


def _cmd_merge_exports(args: argparse.Namespace) -> int:
    from .export import merge_exports

    for path in merge_exports(args.parts, args.out):
        n = len(json.loads(path.read_text())["training"])
        print(f"{path}: {n} items from {len(args.parts)} exports")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export_dataset
    from .store import AnnotationStore

    options: dict = {}
    task = args.task
    if args.bundle:  # the bundle's own recipe; options given on the command line still win
        from .bundles import bundle_for

        info = bundle_for(args.bundle)
        if task and task != info.task:
            raise ValueError(f"--task {task} does not match {info.name}, a {info.task} bundle")
        task = info.task
        options = info.export_options(quick=not args.full)
    elif args.full:
        raise ValueError("--full belongs to --bundle")
    if task is None:
        raise ValueError("give --task or --bundle")
    given = {
        "folds": args.folds,
        "size": args.size,
        "patch_size": args.patch_size,
        "shape": tuple(args.shape) if args.shape else None,
        "radius": args.disc_radius[0] if args.disc_radius else None,
        "ignore_radius": args.disc_radius[1] if args.disc_radius else None,
    }
    options.update({k: v for k, v in given.items() if v is not None})
    with AnnotationStore.open(args.store, create=False) as store:
        report = export_dataset(
            store,
            task,
            args.out,
            seed=args.seed,
            include_model=args.include_model,
            mirror=not args.no_mirror,
            target_mode=args.target_mode,
            annotators=args.annotator,
            progress=not args.quiet,
            **options,
        )
    for problem in report.problems:
        print(f"skipped: {problem}", file=sys.stderr)
    print(
        f"wrote {report.n_items} {task} items of {report.n_patients} patients to "
        f"{args.out} ({', '.join(Path(p).name for p in report.datalists)}); "
        f"{report.skipped} problem(s)"
    )
    if report.problems and not args.allow_skips:
        print(
            "error: some items were skipped (see above); pass --allow-skips to accept",
            file=sys.stderr,
        )
        return 1
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from .evaluation import evaluate_locator_store, evaluate_score_tables, evaluate_us_store

    if args.task == "scores":
        result = evaluate_score_tables(
            args.truth, args.pred, n_resamples=args.bootstrap, seed=args.seed
        )
    elif args.task == "locator":
        result = evaluate_locator_store(args.project, args.pred_source)
    else:
        result = evaluate_us_store(
            args.project, args.pred_source, n_resamples=args.bootstrap, seed=args.seed
        )
    text = json.dumps(result, indent=2)
    if args.out:
        Path(args.out).write_text(text)
        if args.task == "scores":
            print(_score_lines(result))
        print(f"wrote {args.out}")
    else:
        print(text)
    return 0


def _score_lines(result: dict) -> str:
    """A few readable lines of a score comparison (the JSON has everything)."""
    lines = [f"{result['n_patients']} patients"]
    for key in ("narrowing", "erosion"):
        s = result["per_score"].get(key)
        if s:
            lines.append(
                f"  {key}: exact {s['exact_agreement']:.1%}, within one "
                f"{s['within_one_agreement']:.1%}, RMSE {s['rmse']:.3f} ({s['n']} scores)"
            )
    total = result["patient_totals"].get("Overall_Tol")
    if total:
        r = total["pearson_r"]
        lines.append(
            f"  total Sharp/vdH: Pearson r {r['value']:.4f}, RMSE {total['rmse']:.2f} "
            f"({total['n']} complete patients)"
        )
    return "\n".join(lines)


def _cmd_markups(args: argparse.Namespace) -> int:
    from .slicer import export_store_markups, import_store_markups
    from .store import AnnotationStore, Provenance

    with AnnotationStore.open(args.project, create=False) as store:
        record = store.find_image(args.image)
        if record is None:
            raise FileNotFoundError(f"{args.image} is not registered in {store.path}")
        if args.import_file:
            problems = import_store_markups(
                store, record.id, args.import_file, Provenance.human(args.annotator)
            )
            for problem in problems:
                print(f"warning: {problem}", file=sys.stderr)
            print(f"imported {args.import_file} into {record.path}")
            return 1 if problems else 0
        path = export_store_markups(store, record.id, args.out)
    print(f"wrote {path}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Conformal grade sets for the scorer's, the multi-task U-Net's or the RATING ensemble's
    weights (or the locator's radius), from calibration projects."""
    from .calibration import calibrate_pipeline, calibrate_ultrasound
    from .conformal import CALIBRATION_FILE
    from .predict import PredictionService

    if args.weights is not None and args.task != "multitask":
        return _calibrate_version(args)  # a retrained scorer, locator or RATING version
    if not args.project:
        raise ValueError(
            "calibrate needs --project (a calibration project), or --weights a retrained "
            "version (then its own held-out patients are used)"
        )
    args.task = args.task or "scorer"
    if args.members is not None and args.task != "multitask":
        raise ValueError("--members belongs to --task multitask")
    if args.beta != "auto" and args.task not in ("scorer", "multitask"):
        raise ValueError("--beta belongs to --task scorer or multitask")
    service = PredictionService(
        "multitask" if args.task == "multitask" else "two-stage",
        bundles={args.task: args.bundle},
        weights={args.task: args.weights},
        device=args.device,
        members=args.members,
        trusted=args.trust_bundle,
    )
    if args.task == "locator":
        from .locator_calibration import LOCATOR_CALIBRATION_FILE, calibrate_locator
        from .seeds import RADIOGRAPH, check_calibration_seed, cohort_seed

        # a choice made on validation data: never a test seed, nor one the weights saw
        for project in args.project:
            check_calibration_seed(
                cohort_seed(project), RADIOGRAPH, bundles=[service.bundle("locator").root]
            )
        located = calibrate_locator(service.locator(), args.project)
        out = args.out or service.bundle("locator").root / "models" / LOCATOR_CALIBRATION_FILE
        located.save(out)
        counts = {r: len(v) for r, v in located.errors.items()}
        print(f"wrote {out}: {located.source['patients']} patients, joints per region {counts}")
        return 0
    if args.task == "ultrasound":
        from .us_conformal import US_CALIBRATION_FILE

        if len(args.project) > 1:
            raise ValueError("the ultrasound ensemble calibrates on one project (--project once)")
        if args.images is not None:
            raise ValueError("--images belongs to --task scorer (ultrasound reads the pairs)")
        models = service.bundle("ultrasound").root / "models"
        graded = calibrate_ultrasound(args.project[0], models, device=args.device)
        out = args.out or models / US_CALIBRATION_FILE
        graded.save(out)
        beta = "unnormalised" if graded.beta is None else f"beta {graded.beta}"
        print(
            f"wrote {out}: {graded.source['patients']} patients, {graded.source['pairs']} "
            f"pairs, {beta}"
        )
        return 0
    calibration = calibrate_pipeline(args.project, service, images=args.images, beta=args.beta)
    if args.task == "multitask":  # next to the members it was made with
        out = args.out or service.models()["multitask"].calibration_folder / CALIBRATION_FILE
    else:
        out = args.out or service.bundle("scorer").root / "models" / CALIBRATION_FILE
    calibration.save(out)
    counts = {b: len(v) for b, v in calibration.residuals.items()}
    print(
        f"wrote {out}: {calibration.source['patients']} patients, beta {calibration.beta}, "
        f"residuals per bin {counts}"
    )
    return 0


def _calibrate_version(args: argparse.Namespace) -> int:
    """``calibrate --weights PROJECT/models/<bundle>/<version>``: what the retraining job's
    last step does, by hand (its held-out patients; or ``--project`` another project)."""
    from .bundles import bundle_for
    from .recalibrate import calibrate_version
    from .retrain import locator_in_use

    version = args.weights.resolve()
    version = version if version.is_dir() else version.parent
    if not (version / "train_info.json").is_file():
        raise ValueError(
            f"--weights {args.weights} is not a retrained version (expected a folder "
            "PROJECT/models/<bundle>/<version> with train_info.json; the shipped weights are "
            "calibrated without --weights)"
        )
    info = bundle_for(version.parent.name)
    if args.task is not None and args.task != info.task:
        raise ValueError(f"{version} is a version of {info.name}: give --task {info.task}")
    if args.images is not None and info.task != "scorer":
        raise ValueError("--images belongs to --task scorer")
    outcome = calibrate_version(
        version,
        args.project or None,
        bundle_root=info.root,
        locator_weights=locator_in_use(version.parents[2]) if info.task == "scorer" else None,
        out=args.out,
        images=args.images,
        device=args.device,
    )
    print(outcome.message())
    return 0 if outcome.calibrated else 1


def _benchmark_bundle_roots(args: argparse.Namespace) -> list[Path]:
    """Every bundle folder a benchmark run would parse configs from."""
    from .bundles import bundle_for, registry

    if args.task == "all":
        return [info.root for info in registry().values()]
    if args.task == "baselines":  # the shipped scorer and RATING ensemble against baselines
        return [bundle_for("scorer").root, bundle_for("ultrasound").root]
    if args.task == "coverage" and args.pipeline == "multitask":  # one network, one bundle
        return [args.bundle or bundle_for("multitask").root]
    # coverage and hitl: the two-stage pipeline (the scorer's bundle, and the locator's)
    task = "scorer" if args.task in ("coverage", "hitl") else args.task
    task = "ultrasound" if task in ("heatmaps", "us-coverage") else task
    roots = [args.bundle or bundle_for(task).root]
    if args.task in ("coverage", "hitl"):
        roots.append(bundle_for("locator").root)
    return roots + [b for b in (args.locator_bundle, args.scorer_bundle) if b is not None]


def _benchmark_docs(args: argparse.Namespace) -> int:
    """``--task docs``: every table of the docs from its registry entry (doc_tables.py)."""
    from .bundles import bundle_for, check_trusted
    from .doc_tables import DOC_TABLES, run_doc_tables, select

    given = {
        "--heldout": args.heldout, "--bundle": args.bundle, "--compare": args.compare,
        "--seed": args.seed, "--patients": args.patients, "--out": args.out,
        "--retrain": args.retrain, "--locator-bundle": args.locator_bundle,
        "--scorer-bundle": args.scorer_bundle,
    }  # fmt: skip
    extra = [flag for flag, value in given.items() if value not in (None, False, [])]
    if extra:
        raise ValueError(
            f"--task docs takes its cohorts and options from annotation_tools/doc_tables.py; "
            f"drop {', '.join(extra)} (use --only, --work, --cohort, --dry-run)"
        )
    cohorts = {}
    for item in args.cohort:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise ValueError(
                f"--cohort takes NAME=FOLDER (e.g. 5002_schematic=runs/x), got {item!r}"
            )
        cohorts[name] = Path(folder)
    chosen = select(args.only, DOC_TABLES)
    for task in sorted({t for entry in chosen for t in entry.bundles}):
        check_trusted(bundle_for(task).root, args.trust_bundle)
    summary = run_doc_tables(
        args.only,
        **({"work": args.work} if args.work else {}),
        cohorts=cohorts,
        dry_run=args.dry_run,
        device=args.device,
    )
    if summary["failed"]:
        print(f"error: failed: {', '.join(summary['failed'])}", file=sys.stderr)
        return 1
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from .benchmark import run_benchmark
    from .bundles import check_trusted

    if args.task == "docs":
        return _benchmark_docs(args)
    docs_only = {"--only": args.only, "--dry-run": args.dry_run, "--cohort": args.cohort}
    docs_only["--work"] = args.work
    extra = [flag for flag, value in docs_only.items() if value]
    if extra:
        raise ValueError(f"{', '.join(extra)} belong to --task docs")
    for root in _benchmark_bundle_roots(args):  # before any config is parsed
        check_trusted(root, args.trust_bundle)
    out = args.out or Path(f"results/benchmark_{args.task}.json")
    if args.task == "all":
        given = (args.compare, args.locator_bundle, args.scorer_bundle, args.bundle, args.heldout)
        if any(given) or args.pipeline != "two-stage":
            raise ValueError("--task all uses every default; give --task for one bundle's options")
        result = run_benchmark(
            "all", out, retrain=args.retrain, device=args.device, n_resamples=args.resamples
        )
        print(Path(out).with_suffix(".md").read_text())
        print(f"wrote {out} ({result['note']})")
        return 0
    if args.retrain:
        raise ValueError("--retrain belongs to --task all")
    extra: dict = {}
    if args.task == "scorer":
        extra = {
            "compare": args.compare,
            "locator_bundle": args.locator_bundle,
            "n_resamples": args.resamples,
        }
    elif args.task == "ultrasound":
        extra = {
            "compare": args.compare,
            "heatmap_pairs": args.heatmap_pairs,
            "n_resamples": args.resamples,
        }
    elif args.task == "multitask":
        extra = {
            "compare": args.compare,
            "locator_bundle": args.locator_bundle,
            "scorer_bundle": args.scorer_bundle,
            "n_resamples": args.resamples,
        }
    elif args.task == "coverage":
        extra = {"n_resamples": args.resamples, "pipeline": args.pipeline}
    elif args.task in ("us-coverage", "hitl", "baselines"):
        extra = {"n_resamples": args.resamples}
    if args.pipeline != "two-stage" and args.task != "coverage":
        raise ValueError("--pipeline belongs to --task coverage (multitask compares pipelines)")
    if args.locator_bundle and args.task not in ("scorer", "multitask"):
        raise ValueError("--locator-bundle belongs to --task scorer or multitask")
    if args.scorer_bundle and args.task != "multitask":
        raise ValueError("--scorer-bundle belongs to --task multitask")
    if args.compare and args.task == "locator":
        raise ValueError("--compare belongs to --task scorer, ultrasound or multitask")
    defaults = {
        "locator": (40, 2000),
        "scorer": (40, 2000),
        "ultrasound": (60, 2100),
        "multitask": (40, 2000),
        "coverage": (30, 3400),
        "us-coverage": (60, 2100),  # RATING's sets; calibrated on validation seed 3500
        "hitl": (10, 2000),
        "baselines": (20, 1000),  # validation seeds; ultrasound seed + 100
        "heatmaps": (12, 2100),  # phantom pairs, not patients
    }
    args.patients = args.patients or defaults[args.task][0]
    args.seed = args.seed if args.seed is not None else defaults[args.task][1]
    result = run_benchmark(
        args.task,
        out,
        bundle=args.bundle,
        heldout=args.heldout,
        patients=args.patients,
        seed=args.seed,
        device=args.device,
        **extra,
    )
    args.out = out
    print(Path(args.out).with_suffix(".md").read_text())
    print(f"wrote {args.out} ({result['note']})")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import PredictionService, describe

    if args.images is None and args.ultrasound is None:
        raise ValueError("give --images (radiographs) and/or --ultrasound (a pairs table)")
    if args.pipeline != "multitask" and (
        args.members is not None or args.multitask_bundle is not None
    ):
        raise ValueError("--members and --multitask-bundle belong to --pipeline multitask")
    service = PredictionService(
        args.pipeline,
        bundles={
            "locator": args.locator_bundle,
            "scorer": args.scorer_bundle,
            "multitask": args.multitask_bundle,
            "ultrasound": args.us_bundle,
        },
        device=args.device,
        members=args.members,
        trusted=args.trust_bundle,
    )
    status = 0
    shard = _torchrun_shard()
    if args.ultrasound is not None and (shard is None or shard[0] == 0):
        status = _predict_ultrasound(service, args)  # under torchrun, rank 0 grades the pairs
    if args.images is None:
        return status
    with _progress_bar(not args.quiet) as on_progress:
        result = service.predict_folder(
            args.images,
            args.out,
            case_table=args.cases,
            store=args.store,
            explain=not args.no_explain,
            shard=shard,
            overlays=not args.no_overlays,
            on_progress=on_progress,
            coverage=args.coverage,
        )
    if shard is not None:
        _merge_when_all_ranks_are_done(args.out, shard)
    facts = describe(result)
    print(
        f"scored {facts['patients']} patient(s), {facts['radiographs']} radiograph(s) in "
        f"{facts['seconds']} s -> {args.out} (scores_ra2dream.csv, scores/, shap/, summary.json)"
    )
    for path, reason in result.failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    return 3 if result.failures else status


@contextlib.contextmanager
def _progress_bar(show: bool) -> Iterator[Callable[[Any], None]]:
    """A tqdm bar fed by the prediction service's :class:`~annotation_tools.predict.Progress`."""
    from tqdm.auto import tqdm

    bar = tqdm(total=1, disable=not show)

    def update(event: Any) -> None:
        bar.total = event.total
        bar.set_description(event.message)
        bar.n = event.done
        bar.refresh()

    try:
        yield update
    finally:
        bar.close()


def _torchrun_shard() -> tuple[int, int] | None:
    """(rank, world size) when started by ``torchrun`` with several processes, else None."""
    import os

    world = int(os.environ.get("WORLD_SIZE", "1"))
    return (int(os.environ.get("RANK", "0")), world) if world > 1 else None


def _merge_when_all_ranks_are_done(out: Path, shard: tuple[int, int]) -> None:
    """torch.distributed (gloo, set up by torchrun's environment) waits for every rank; rank 0
    then joins the per-rank tables."""
    import torch.distributed as dist

    from .predict import merge_shards

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    try:
        dist.barrier()
        if shard[0] == 0:
            merged = merge_shards(out)
            print(f"merged {merged['ranks']} ranks: {len(merged['patients'])} patient(s)")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _predict_ultrasound(service: Any, args: argparse.Namespace) -> int:
    """``--ultrasound TABLE``: the RATING bundle on a pairs table -> OUT/ultrasound/."""
    out = args.out / "ultrasound"
    source: dict[str, Any] = (
        {"project": args.ultrasound}
        if args.ultrasound.is_dir()
        else {"pairs_table": args.ultrasound}
    )
    graded = service.grade_ultrasound(
        out,
        explain=not args.no_explain,
        progress=not args.quiet,
        auto_roi=args.auto_roi,
        coverage=args.coverage,
        **source,
    )
    summary = graded.summary
    proposed = 0
    if (out / "ultrasound_grades.csv").exists():
        import csv

        with open(out / "ultrasound_grades.csv", newline="") as handle:
            proposed = sum(r.get("roi_source") == "proposed" for r in csv.DictReader(handle))
    print(
        f"graded {summary['n_graded']} of {summary['n_pairs']} ultrasound pair(s) -> {out} "
        "(ultrasound_grades.csv, <pair>.json, heatmaps, summary.json)"
        + (f"; {proposed} with the proposed ROI" if args.auto_roi else "")
    )
    for reason in graded.skipped:
        print(f"skipped {reason}", file=sys.stderr)
    return 3 if summary["failed"] else 0


def _cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    page = build_report(
        args.out,
        project=args.project,
        predicted=args.predicted,
        screenshot=args.screenshot,
        max_patients=args.max_patients,
    )
    print(f"report: {page.resolve()} (phantom figures, not clinical)")
    return 0


def _device(text: str) -> str:
    """argparse type of ``--device``: validated here, passed on as a plain string."""
    from .bundles import check_device

    try:
        return check_device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _beta(text: str) -> str | float:
    """argparse type of ``--beta``: ``auto`` or a positive number."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"beta must be auto or a number > 0, got {text!r}")
    return value


MAX_PHANTOM_HEIGHT = 4096  # pixels; a phantom cohort beyond this is a typo, not a study


def _cmd_reregister(args: argparse.Namespace) -> int:
    from .store import AnnotationStore

    with AnnotationStore.open(args.project, create=False) as store:
        record = store.find_image(args.image)
        if record is None:
            raise FileNotFoundError(f"{args.image} is not registered in {store.path}")
        before = record.sha256
        record = store.reregister_image(record.id)
    state = "unchanged" if before == record.sha256 else "new content accepted"
    print(f"{record.path}: {state} (sha256 {record.sha256[:12]}...)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ra-joints",
        description="Rheumatoid-arthritis joint scoring: phantoms, annotation store, export.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--bundles",
        type=Path,
        help="folder of MONAI bundles to use instead of the shipped ones "
        "(also: environment variable RA_JOINTS_BUNDLES)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("phantoms", help="generate a phantom cohort (a ready project folder)")
    p.add_argument("--out", required=True, type=Path, help="empty folder to write the cohort to")
    p.add_argument("--patients", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--height", type=int, default=1200, help="radiograph height in pixels")
    p.add_argument("--us-pairs", type=int, default=2, help="ultrasound pairs per patient")
    p.add_argument(
        "--style",
        default=None,
        help="how the phantoms are drawn (default: anatomical, real bone meshes posed and "
        "X-rayed; schematic: fast capsule bones, for unit tests and the shipped weights)",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument(
        "--no-raters",
        action="store_true",
        help="truth only: no simulated raters (raters/ and their store revisions)",
    )
    p.set_defaults(func=_cmd_phantoms)

    p = sub.add_parser("bundles", help="the MONAI bundles in use: folder, task, version, ready?")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bundles)

    p = sub.add_parser(
        "import",
        help="register DICOM/PNG/JPEG/TIFF files or folders in a project (created if needed)",
    )
    p.add_argument("--project", type=Path, required=True, help="project folder")
    p.add_argument("sources", nargs="+", type=Path, help="files or folders (searched recursively)")
    p.add_argument(
        "--cases",
        type=Path,
        help="CSV: path (or file), patient_id, limb, visit, modality, site, pair "
        "(default: DICOM tags, then file names like P001_LH.dcm)",
    )
    p.add_argument(
        "--decide-limbs",
        action="store_true",
        help="when no table, tag or file name gives the limb, let the joint locator decide "
        "(two network passes per such file); below --limb-threshold the file is listed with "
        "its suggestion instead",
    )
    p.add_argument(
        "--limb-threshold",
        type=float,
        default=None,
        help="confidence the locator's limb call needs (0..1, default 0.3: "
        "annotation_tools.intake.LIMB_THRESHOLD)",
    )
    p.add_argument("--device", default=None, help="--decide-limbs: cpu, cuda, cuda:N or mps")
    p.add_argument("--json", action="store_true", help="print the full report as JSON")
    p.set_defaults(func=_cmd_import)

    p = sub.add_parser("summary", help="what a project folder holds")
    p.add_argument("--project", required=True, type=Path)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_summary)

    p = sub.add_parser("export-dream", help="write the RA2-DREAM score table of a project")
    p.add_argument("--project", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument(
        "--all-sources", action="store_true", help="include unconfirmed model predictions"
    )
    p.add_argument(
        "--annotator",
        action="append",
        help="only this annotator's grades (repeatable), e.g. a simulated rater: rater_a",
    )
    p.set_defaults(func=_cmd_export_dream)

    p = sub.add_parser(
        "agreement",
        help="agreement of two readers' tables (RA2-DREAM or ultrasound CSVs): exact, within "
        "one, Pearson r, linearly weighted kappa, totals",
    )
    p.add_argument("a", type=Path, help="first reader's table")
    p.add_argument("b", type=Path, help="second reader's table (same layout)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_agreement)

    p = sub.add_parser("import-dream", help="read an RA2-DREAM score table into a project")
    p.add_argument("--project", required=True, type=Path)
    p.add_argument("--csv", required=True, type=Path)
    p.add_argument("--annotator", required=True, help="who scored the table")
    p.set_defaults(func=_cmd_import_dream)

    p = sub.add_parser(
        "image-json", help="newest annotations of one image (or ultrasound pair) as JSON"
    )
    p.add_argument("--project", required=True, type=Path)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(
        "--image", type=Path, help="the image to write (an ultrasound image: its pair)"
    )
    group.add_argument(
        "--import", dest="import_file", type=Path, help="add a per-image JSON's annotations"
    )
    p.add_argument("--out", type=Path, help="write here instead of printing")
    p.set_defaults(func=_cmd_image_json)

    p = sub.add_parser(
        "reregister",
        help="accept an image's changed file content (its sha256) after checking that its "
        "annotations still fit; until then export and predict leave it out",
    )
    p.add_argument("--project", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path, help="the image's path")
    p.set_defaults(func=_cmd_reregister)

    p = sub.add_parser("export", help="write a MONAI dataset + datalist for a bundle")
    p.add_argument("--store", required=True, type=Path, help="project folder or .sqlite file")
    p.add_argument("--task", choices=["locator", "scorer", "ultrasound", "multitask"])
    p.add_argument(
        "--bundle",
        help="export for this bundle (task or folder name, or a bundle folder): task, folds and "
        "sizes come from its training configuration; explicit options still win",
    )
    p.add_argument(
        "--full",
        action="store_true",
        help="with --bundle: the full training configuration (default: the quick one)",
    )
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--folds", type=int, help="patient-level folds (default 5)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--include-model",
        action="store_true",
        help="also export model predictions no human confirmed",
    )
    p.add_argument(
        "--allow-skips", action="store_true", help="exit 0 even when items had to be skipped"
    )
    p.add_argument(
        "--annotator",
        action="append",
        help="grades of this reader only (repeatable), e.g. a simulated rater: rater_a",
    )
    p.add_argument("--size", type=int, help="locator: image side after resizing (default 512)")
    p.add_argument(
        "--no-mirror",
        action="store_true",
        help="keep right limbs as they are (default: mirror to left)",
    )
    p.add_argument("--target-mode", choices=["square", "disc"], default="square")
    p.add_argument("--patch-size", type=int, help="scorer: patch side in pixels (default 128)")
    p.add_argument(
        "--shape",
        type=int,
        nargs=2,
        metavar=("H", "W"),
        help="multitask: input grid after the edge crop (Maziarz et al.: 864 928)",
    )
    p.add_argument(
        "--disc-radius",
        type=float,
        nargs=2,
        metavar=("R_LABEL", "R_IGNORE"),
        help="multitask: labelled disc radius and outer radius of the ignored ring (grid px)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "merge-exports",
        help="one training set from several exports of one task (e.g. two phantom styles)",
    )
    p.add_argument("parts", nargs="+", type=Path, help="folders written by `ra-joints export`")
    p.add_argument("--out", required=True, type=Path, help="where the merged datalists go")
    p.set_defaults(func=_cmd_merge_exports)

    p = sub.add_parser("metrics", help="evaluation figures of the RA literature")
    p.add_argument("task", choices=["scores", "locator", "ultrasound"])
    p.add_argument("--truth", type=Path, help="scores: RA2-DREAM table with the truth")
    p.add_argument("--pred", type=Path, help="scores: RA2-DREAM table with predictions")
    p.add_argument("--project", type=Path, help="locator/ultrasound: project folder")
    p.add_argument(
        "--pred-source",
        default="model",
        help="locator/ultrasound: provenance of the predictions (default: model)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for CIs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path)
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser("markups", help="joint centres to/from 3D Slicer Markups JSON")
    p.add_argument("--project", required=True, type=Path)
    p.add_argument("--image", required=True, type=Path)
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--out", type=Path, help="write a .mrk.json")
    group.add_argument("--import", dest="import_file", type=Path, help="read a .mrk.json")
    p.add_argument("--annotator", default="slicer", help="who placed the imported points")
    p.set_defaults(func=_cmd_markups)

    p = sub.add_parser("benchmark", help="measure a shipped bundle on held-out phantoms")
    p.add_argument(
        "--task",
        default="all",
        choices=[
            "all",
            "locator",
            "scorer",
            "ultrasound",
            "multitask",
            "coverage",
            "us-coverage",
            "hitl",
            "baselines",
            "heatmaps",
            "docs",
        ],
        help="one bundle, or all of them in one run (default); docs: regenerate every table "
        "of docs/benchmarks.md, docs/uncertainty.md and the bundles' READMEs that the registry "
        "annotation_tools/doc_tables.py lists, each with its command, seeds and weights hash; "
        "multitask: the radiograph "
        "pipelines side by side (two-stage, Hirano via --compare, multi-task U-Net); "
        "baselines: trivial, pixel-feature and shuffled-label baselines vs the shipped models "
        "(not in all: it trains its own baselines on a training-seed cohort); coverage / "
        "us-coverage: the conformal grade sets of the scorer / the RATING ensemble",
    )
    p.add_argument("--out", type=Path, help="JSON file (default: results/benchmark_<task>.json)")
    p.add_argument(
        "--retrain",
        action="store_true",
        help="all: retrain every bundle from scratch with its quick configuration first "
        "(in copies; about an hour on 2 CPU cores) instead of using the shipped weights",
    )
    p.add_argument("--bundle", type=Path, help="bundle folder (default: the repository's)")
    p.add_argument(
        "--heldout",
        type=Path,
        help="project folder to measure on (default: a fresh phantom cohort generated with --seed)",
    )
    p.add_argument(
        "--patients", type=int, default=None, help="default: 40 (radiographs), 60 (ultrasound)"
    )
    p.add_argument(
        "--seed",
        type=int,
        default=None,
        help="phantom cohort seed (default: the validation seeds 2000, ultrasound 2100, coverage "
        "3400); reported figures use the test seeds 5000-5099 (radiographs) and 5100-5199 "
        "(ultrasound); training seeds are refused (annotation_tools/seeds.py)",
    )
    p.add_argument("--device", type=_device, default=None, help="cpu, cuda, cuda:N or mps")
    p.add_argument(
        "--compare",
        type=Path,
        nargs="*",
        default=[],
        help="scorer: folders of other trained variants (model.pt + config.json); ultrasound: "
        "other trained ensembles (a models folder with ensemble.json), e.g. without jigsaw",
    )
    p.add_argument(
        "--locator-bundle", type=Path, help="scorer/multitask: locator bundle for end to end"
    )
    p.add_argument("--scorer-bundle", type=Path, help="multitask: the two-stage pipeline's scorer")
    p.add_argument(
        "--pipeline",
        choices=["two-stage", "multitask"],
        default="two-stage",
        help="coverage: whose grade sets - the scorer's, end to end (default), or the "
        "multi-task U-Net's (--bundle then names a ra_multitask_unet folder)",
    )
    p.add_argument(
        "--resamples",
        type=int,
        default=1000,
        help="scorer/ultrasound: bootstrap resamples for the 95%% confidence intervals",
    )
    p.add_argument(
        "--heatmap-pairs",
        type=int,
        default=3,
        help="ultrasound: pairs whose integrated-gradients heatmaps are timed (0: none)",
    )
    p.add_argument(
        "--trust-bundle",
        action="store_true",
        help="allow bundles from a folder you supplied (--*-bundle, --bundles, "
        "RA_JOINTS_BUNDLES): their configs are executable code; the shipped ones need no flag",
    )
    p.add_argument(
        "--only", nargs="+", metavar="NAME", help="docs: these tables only (default: all)"
    )
    p.add_argument(
        "--work",
        type=Path,
        help="docs: folder of the phantom cohorts, <seed>_<style>, generated only if missing "
        "(default: runs/docs)",
    )
    p.add_argument(
        "--cohort",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="docs: reuse an existing cohort folder for a cohort name, e.g. "
        "5002_schematic=runs/test_s5002 (repeatable)",
    )
    p.add_argument(
        "--dry-run", action="store_true", help="docs: list what would run and where it goes"
    )
    p.set_defaults(func=_cmd_benchmark)

    p = sub.add_parser(
        "predict",
        help="locate and score every radiograph of a folder (RA2-DREAM CSV, JSON, SHAP PNGs)",
        description="Locate and score every radiograph of a folder. One file that cannot be "
        "used (unreadable, no hand or foot, changed since it was registered) is listed with "
        "its reason in summary.json and on stderr; the rest is written as if it were not "
        "there (a patient missing one image keeps its other limbs, with patch scores).",
        epilog="exit status: 0 everything was predicted; 3 some files, pairs or patients were "
        "skipped or failed (listed), the rest was written; 2 nothing could run (bad options, "
        "no usable bundle, an untrusted bundle, an unreadable store, no image the store takes).",
    )
    p.add_argument("--images", type=Path, help="folder of DICOM/PNG/JPEG/TIFF radiographs")
    p.add_argument(
        "--ultrasound",
        type=Path,
        help="pairs table (ultrasound_scores.csv or ultrasound_pairs.json layout, see the "
        "ra_us_rating bundle's docs) of grey-scale/Doppler pairs with ROI boxes, or a project "
        "folder: its pairs are graded and the grades written there as model revisions",
    )
    p.add_argument(
        "--auto-roi",
        action="store_true",
        help="ultrasound: a pair without a drawn ROI is cut with the proposed box over the "
        "joint recess (found from the bone profile) instead of being skipped; the proposal is "
        "recorded in <pair>.json (roi_source) and, in a project, as a model ROI revision that "
        "never replaces a person's box",
    )
    p.add_argument("--us-bundle", type=Path, help="ultrasound bundle (default: the shipped one)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--cases",
        type=Path,
        help="CSV with columns file, patient_id, limb (default: DICOM tags, then file names "
        "like P001_LH.dcm)",
    )
    p.add_argument("--store", type=Path, help="also write model revisions into this project")
    p.add_argument(
        "--pipeline",
        choices=["two-stage", "multitask"],
        default="two-stage",
        help="radiographs: locator + patch scorer + symmetry (default), or the one-network "
        "multi-task U-Net (ra_multitask_unet)",
    )
    p.add_argument("--locator-bundle", type=Path)
    p.add_argument("--scorer-bundle", type=Path)
    p.add_argument("--multitask-bundle", type=Path, help="default: the shipped ra_multitask_unet")
    p.add_argument(
        "--members", type=int, default=None, help="multitask: use the first N ensemble members"
    )
    p.add_argument(
        "--no-explain",
        action="store_true",
        help="skip the SHAP and integrated-gradients heatmaps",
    )
    p.add_argument("--no-overlays", action="store_true", help="skip the overlay PNGs")
    p.add_argument(
        "--coverage",
        type=float,
        default=0.9,
        help="coverage of the conformal grade sets in joint_scores.csv and, for a calibrated "
        "RATING ensemble, ultrasound_grades.csv (default 0.9)",
    )
    p.add_argument(
        "--device",
        type=_device,
        default=None,
        help="cpu, cuda, cuda:N or mps (default: cuda when present)",
    )
    p.add_argument(
        "--trust-bundle",
        action="store_true",
        help="allow bundles from a folder you supplied (--*-bundle, --bundles, "
        "RA_JOINTS_BUNDLES): their configs are executable code; the shipped ones need no flag",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_cmd_predict)

    p = sub.add_parser(
        "retrain",
        help="train a bundle on the project's reviewed annotations: a job of its own that "
        "registers a new model version when it ends (closing napari does not stop it)",
    )
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--bundle", required=True, help="bundle name or task (ra-joints bundles)")
    p.add_argument("--full", action="store_true", help="the full configuration (GPU)")
    p.add_argument("--folds", type=int, default=None, help="default: the bundle's recipe")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override a training config value, e.g. --set epochs=5 (repeatable)",
    )
    p.add_argument(
        "--trust-bundle",
        action="store_true",
        help="allow bundles from a folder you supplied (--bundles, "
        "RA_JOINTS_BUNDLES): their configs are executable code; the shipped ones need no flag",
    )
    p.add_argument("--detach", action="store_true", help="start the job and return")
    p.add_argument("--verbose", action="store_true", help="show library warnings too")
    p.set_defaults(func=_cmd_retrain)

    p = sub.add_parser(
        "calibrate",
        help="conformal grade sets for the scorer, the multi-task U-Net or the RATING ensemble, "
        "or the locator's radius and probability of being right: run it on a calibration "
        "project whose reference is known (never one you report figures on)",
    )
    p.add_argument(
        "--task",
        choices=["scorer", "multitask", "locator", "ultrasound"],
        default=None,
        help="scorer (the default): grade sets (models/conformal.json); multitask: grade sets "
        "for the multi-task U-Net (ra_multitask_unet models/conformal.json, next to its "
        "members); locator: a position radius and a probability of being right per joint "
        "(models/locator_calibration.json); ultrasound: grade sets for SH, vascularity and "
        "combined (ra_us_rating models/us_conformal.json); with --weights: the version's bundle",
    )
    p.add_argument(
        "--project",
        type=Path,
        action="append",
        help="with scores_ra2dream.csv (ultrasound: graded pairs in its store or "
        "ultrasound_scores.csv); scorer, multitask and locator pool several (repeat "
        "--project); with --weights: default the version's own project, its held-out patients",
    )
    p.add_argument("--images", type=Path, help="default: the project's radiographs/ folder")
    p.add_argument(
        "--out", type=Path, help="default: the bundle's models/ folder (--weights: the version's)"
    )
    p.add_argument("--bundle", type=Path, help="the task's bundle folder (default: the shipped)")
    p.add_argument(
        "--members", type=int, default=None, help="multitask: calibrate the first N members"
    )
    p.add_argument(
        "--weights",
        type=Path,
        help="a retrained version, PROJECT/models/<bundle>/<version> (or its weights file): "
        "calibrate it instead of the shipped weights, written next to its weights (multitask: "
        "its weights file, calibrated on --project)",
    )
    p.add_argument(
        "--beta",
        type=_beta,
        default="auto",
        help="scorer/multitask: the spread's offset in |truth - prediction| / (sd + beta), or "
        "auto (default: the narrowest 90%% sets that keep 90%% over random halves of the "
        "calibration patients)",
    )
    p.add_argument("--device", type=_device, default=None)
    p.add_argument(
        "--trust-bundle",
        action="store_true",
        help="allow a bundle folder you supplied (--bundle): its configs are executable code",
    )
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("jobs", help="the retraining jobs of a project and how far they are")
    p.add_argument("--project", type=Path, required=True)
    p.add_argument("--cancel", metavar="JOB_ID", help="stop a running job and its training")
    p.set_defaults(func=_cmd_jobs)

    p = sub.add_parser(
        "report", help="self-contained HTML report of predictions against a phantom project"
    )
    p.add_argument("--project", type=Path, required=True, help="the project holding the truth")
    p.add_argument("--predicted", type=Path, required=True, help="the ra-joints predict --out")
    p.add_argument("--out", type=Path, required=True, help="folder for report.html and figures")
    p.add_argument("--screenshot", type=Path, help="a napari screenshot PNG to include")
    p.add_argument("--max-patients", type=int, default=None, help="patients shown in detail")
    p.set_defaults(func=_cmd_report)
    return parser


def _cmd_retrain(args: argparse.Namespace) -> int:
    """Retrain one bundle on the project's reviewed annotations, as a job of the project."""
    from .bundles import bundle_for
    from .jobs import start_retrain

    info = bundle_for(args.bundle)
    overrides = []
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ValueError(f"--set takes KEY=VALUE with a config key, got {item!r}")
        overrides += [f"--{key}", value]
    job = start_retrain(
        args.project,
        info.root,
        quick=not args.full,
        folds=args.folds,
        overrides=overrides,
        trusted=args.trust_bundle,
    )
    print(f"job {job.id}: {job.path} (log {job.log_path})")
    if args.detach:
        print("running on its own; follow it with: ra-joints jobs --project", args.project)
        return 0
    shown = 0
    try:
        while True:
            job = job.refresh()
            lines = job.tail(100_000, filtered=not args.verbose)
            for line in lines[shown:]:
                print(line)
            shown = len(lines)
            if not job.active:
                break
            time.sleep(1.0)
    except KeyboardInterrupt:
        job.cancel()
        print("cancelled", file=sys.stderr)
        return 130
    print(job.summary())
    return 0 if job.finished_ok else 1


def _cmd_jobs(args: argparse.Namespace) -> int:
    from .jobs import jobs

    found = jobs(args.project)
    if args.cancel:
        chosen = [j for j in found if j.id == args.cancel]
        if not chosen:
            raise ValueError(f"no job {args.cancel!r} in {args.project}")
        chosen[0].cancel()
        print(f"cancel sent to {args.cancel}")
        return 0
    if not found:
        print(f"no retraining jobs in {args.project}")
    for job in found:
        print(f"{job.id}  {job.summary()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    from .bundles import BUNDLES_ENV, BundleNotFound
    from .imageio import ImageReadError
    from .store import StoreError

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.bundles is not None:  # every default bundle path below is looked up there
        import os

        os.environ[BUNDLES_ENV] = str(args.bundles.resolve())
    try:
        return int(args.func(args))
    except (
        StoreError,
        ImageReadError,
        BundleNotFound,
        FileExistsError,
        FileNotFoundError,
        ValueError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
