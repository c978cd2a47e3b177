"""Reads a Prometheus text exposition (a file named on the command line) with the reference
client library's parser, prometheus_client.parser.text_string_to_metric_families, and prints
what it found as JSON: {family: {"type": ..., "samples": {sample name + labels: value}}}.
metrics_test.cpp runs it with Debian's /usr/bin/python3 (package python3-prometheus-client);
any parse error fails it (exit 1)."""

import json
import sys

from prometheus_client.parser import text_string_to_metric_families


def series(sample):
    labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
    return sample.name + ("{" + labels + "}" if labels else "")


def main():
    with open(sys.argv[1], encoding="utf-8") as f:
        text = f.read()
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name in out:
            raise SystemExit(f"family {family.name} appears twice")
        out[family.name] = {
            "type": family.type,
            "samples": {series(s): s.value for s in family.samples},
        }
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
