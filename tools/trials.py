"""N seeded runs of one trainer configuration: means with 95% Student-t confidence intervals.

    python -m tools.trials --n=20 --out=runs/trials38 -- --data_dir=../shared/data/tensorflow_datasets \
        --depth=38 --init_from=runs/reproduce/baseline/checkpoints/epoch-0009.keras ...

Everything after `--` is passed to the trainer (`trainers.cifar`, or
`--trainer=tiny_imagenet`); the tool adds `--seed` and `--model_dir`. Trial k
runs with seed `first_seed + k` in `O/seed-<seed>/` (a normal run directory).
Rerun the same command to resume: finished trials are not rerun, an
interrupted one resumes from its checkpoint. Writes `O/trials.json` and
`O/trials.md` (the paper's form: the 95% interval for the mean of test
accuracy and energy savings) after every trial.
"""

import os
import time

from absl import app
from absl import flags

from energynet_tf import cli
from energynet_tf.cli import UsageError
from tools import runs
from tools import stats

FLAGS = flags.FLAGS

# Numbers summarised per trial (those present in the trial's metrics.json).
QUANTITIES = (
    ("test_accuracy", "test accuracy"),
    ("test_top5_accuracy", "test top-5 accuracy"),
    ("energy_savings", "energy savings (gates charged)"),
    ("block_energy_savings", "block-only savings"),
    ("mac_savings", "MAC savings"),
)


def _define_flags():
    flags.DEFINE_integer("n", 20, "Number of seeded trials.")
    flags.DEFINE_string("out", None, "Output directory: one run directory per seed, trials.json, trials.md.")
    flags.DEFINE_enum("trainer", "cifar", list(runs.TRAINERS), "The trainer module in trainers/.")
    flags.DEFINE_integer("first_seed", 0, "Seed of the first trial; trial k uses first_seed + k.")
    flags.DEFINE_float("level", 0.95, "Confidence level of the intervals.")
    flags.DEFINE_boolean("echo", False, "Print the trainers' own progress lines too (they always go to O/logs/).")


def check_trainer_flags(trainer_flags):
    """Refuses forwarded flags the tool sets itself, and anything that is not a flag.

    Raises:
        UsageError: naming the argument.
    """
    for arg in trainer_flags:
        if not arg.startswith("--"):
            raise UsageError(f"unexpected argument {arg!r}: trainer flags go after `--` and look like --name=value")
        name = arg[2:].split("=", 1)[0]
        if name in ("seed", "model_dir", "check_only"):
            raise UsageError(f"--{name} is set by tools.trials (one per trial); remove it from the trainer flags")


def summarise(trials, level=0.95):
    """Mean and confidence interval of every quantity over the finished trials.

    Args:
        trials: list of dicts with `seed` and the trial's metrics.
        level: confidence level.

    Returns:
        A dict: quantity name -> `stats.mean_confidence_interval` result.
    """
    out = {}
    for key, _ in QUANTITIES:
        values = [t[key] for t in trials if t.get(key) is not None]
        if values:
            out[key] = stats.mean_confidence_interval(values, level)
    return out


def _pct(value):
    return "n/a" if value is None else f"{100 * value:.2f}%"


def markdown(result):
    """The summary as Markdown, in the paper's form (the interval for the mean)."""
    level = result["level"]
    lines = [
        f"# {result['finished']} seeded trials of one configuration",
        "",
        f"Command: `{result['command']}`  ",
        f"Commit: `{result['commit']}`  ",
        f"Seeds: {', '.join(str(t['seed']) for t in result['trials'])}",
        "",
        f"| | mean | std | {level:.0%} confidence interval for the mean |",
        "|---|---|---|---|",
    ]
    for key, label in QUANTITIES:
        s = result["summary"].get(key)
        if s is None:
            continue
        interval = "n/a (one trial)" if s["low"] is None else f"[{_pct(s['low'])}, {_pct(s['high'])}]"
        std = "n/a" if s["std"] is None else f"{100 * s['std']:.2f} pts"
        lines.append(f"| {label} | {_pct(s['mean'])} | {std} | {interval} |")
    lines += ["", "| seed | " + " | ".join(label for key, label in QUANTITIES if key in result["summary"]) + " | epochs |",
              "|---|" + "---|" * (len([k for k, _ in QUANTITIES if k in result["summary"]]) + 1)]
    for t in result["trials"]:
        cells = [_pct(t.get(key)) for key, _ in QUANTITIES if key in result["summary"]]
        lines.append(f"| {t['seed']} | " + " | ".join(cells) + f" | {t.get('epochs')} |")
    return "\n".join(lines) + "\n"


def main(trainer_flags, command):
    if FLAGS.n < 1:
        raise UsageError(f"--n={FLAGS.n} must be a positive integer")
    if FLAGS.first_seed < 0:
        raise UsageError(f"--first_seed={FLAGS.first_seed} must be >= 0")
    if not 0 < FLAGS.level < 1:
        raise UsageError(f"--level={FLAGS.level} must be in (0, 1)")
    if not FLAGS.out:
        raise UsageError("--out is required: the output directory (e.g. --out=runs/trials)")
    check_trainer_flags(trainer_flags)
    out = os.path.abspath(FLAGS.out)
    state_path = os.path.join(out, "trials_state.json")
    config = {"trainer": FLAGS.trainer, "trainer_flags": trainer_flags}
    previous = runs.previous_config(state_path)
    if previous is not None and previous != config:
        raise UsageError(f"--out={FLAGS.out} holds trials of another configuration ({previous}); "
                         "use the same --trainer and trainer flags, or a new --out")
    if previous is None:
        # The trainer checks its flags and the data before anything is written.
        runs.check_trainer_flags(FLAGS.trainer, [*trainer_flags, f"--seed={FLAGS.first_seed}",
                                                 f"--model_dir={os.path.join(out, f'seed-{FLAGS.first_seed}')}"])
    runs.claim_out(out, state_path, config)
    from energynet_tf import io_utils
    seeds = [FLAGS.first_seed + k for k in range(FLAGS.n)]
    trials = []
    started = time.time()
    for k, seed in enumerate(seeds):
        model_dir = os.path.join(out, f"seed-{seed}")
        state = "finished earlier" if runs.is_finished(model_dir) else "running"
        print(f"[trials] trial {k + 1}/{len(seeds)} (seed {seed}): {state}; {time.time() - started:.0f}s so far",
              flush=True)
        metrics = runs.run_trainer(f"seed {seed}", model_dir, [*trainer_flags, f"--seed={seed}"],
                                   os.path.join(out, "logs", f"seed-{seed}.log"), trainer=FLAGS.trainer,
                                   echo=FLAGS.echo)
        trial = {"seed": seed, "model_dir": model_dir, "epochs": metrics.get("epochs"),
                 "wall_seconds": metrics.get("wall_seconds")}
        for key, _ in QUANTITIES:
            if key in metrics:
                trial[key] = metrics[key]
        trials.append(trial)
        print(f"[trials] seed {seed}: " + ", ".join(
            f"{label} {_pct(trial[key])}" for key, label in QUANTITIES if key in trial), flush=True)
        result = {"command": command, "commit": runs.git_commit(), "trainer": FLAGS.trainer,
                  "trainer_flags": trainer_flags, "level": FLAGS.level, "requested": len(seeds),
                  "finished": len(trials), "trials": trials, "summary": summarise(trials, FLAGS.level)}
        io_utils.atomic_write_json(os.path.join(out, "trials.json"), result)
        io_utils.atomic_write_text(os.path.join(out, "trials.md"), markdown(result))
    print(markdown(result), flush=True)
    print(f"[trials] wrote {out}/trials.json and trials.md", flush=True)


def _entry(argv):
    import sys

    command = "python -m tools.trials " + " ".join(sys.argv[1:])
    # argv[1:] is what follows `--`: the trainer's flags.
    cli.run_tool(lambda: main(list(argv[1:]), command), argv[:1])


if __name__ == "__main__":
    import signal

    signal.signal(signal.SIGTERM, runs.exit_on_sigterm)
    _define_flags()
    app.run(_entry, flags_parser=cli.parse_flags_or_exit)
