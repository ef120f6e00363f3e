"""Reads what the load scripts gather: one line per wrk run,
`workload|server|RESULT requests=... duration_us=... p99_us=...` (the
RESULT line scripts/*.lua print), into the runs of each (workload, server)
pair, in the order they ran."""

import statistics


def read(path):
    runs = {}
    for line in open(path):
        work, server, result = line.rstrip("\n").split("|")
        d = dict(p.split("=") for p in result.split()[1:])
        runs.setdefault((work, server), []).append(dict(
            rps=int(d["requests"]) / (int(d["duration_us"]) / 1e6),
            p99=int(d["p99_us"]) / 1000,
            # The server's CPU time per request, in µs, where the script
            # measured it (scripts/lib.sh `with_cpu`).
            cpu=int(d.get("server_cpu_ns", 0)) / 1000,
            # Every core's busy time per request (server, load generator,
            # kernel), in µs.
            busy=int(d.get("busy_cpu_ns", 0)) / 1000,
            err=int(d["non2xx"]) + int(d["socket_errors"])))
    return runs


def med(xs, field):
    return statistics.median(x[field] for x in xs)


def trailer(runs):
    """The lines every report ends with: errors, then every round."""
    errors = {f"{w} / {s}": sum(x["err"] for x in xs)
              for (w, s), xs in runs.items() if sum(x["err"] for x in xs)}
    lines = ["\nNon-2xx answers and socket errors: "
             + (", ".join(f"{k}: {v}" for k, v in errors.items()) or "none") + ".",
             "\nAll rounds, requests/s:\n"]
    for (w, s), xs in runs.items():
        lines.append(f"- {w}, {s}: " + " / ".join(f"{x['rps']:,.0f}" for x in xs))
    return lines
