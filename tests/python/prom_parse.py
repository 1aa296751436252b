"""Parses a Prometheus text exposition (stdin) with the reference parser,
prometheus_client.parser, and prints it as JSON:
{"families": {name: type}, "samples": [[name, labels, value], ...]}.
Exit 3 when prometheus_client is missing, 1 when the text does not parse."""
import json
import sys

try:
    from prometheus_client.parser import text_string_to_metric_families
except ImportError:
    sys.stderr.write("missing python package: pip install prometheus-client==0.26.0\n")
    sys.exit(3)

text = sys.stdin.read()
families = {}
samples = []
try:
    for family in text_string_to_metric_families(text):
        families[family.name] = family.type
        for s in family.samples:
            samples.append([s.name, s.labels, s.value])
except Exception as e:  # the parser raises ValueError and others
    sys.stderr.write(f"exposition does not parse: {e!r}\n")
    sys.exit(1)
json.dump({"families": families, "samples": samples}, sys.stdout)
