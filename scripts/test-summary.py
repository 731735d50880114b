#!/usr/bin/env python3
"""The summary at the end of `make test`: Swift tests passed / failed / skipped (from the xUnit files of
swift-testing that scripts/test.sh asks for), C checks passed / failed (the last line of Tests/CDLMTests/run.sh),
and the ten slowest Swift tests with their times. Exit status 1 if a phase left no results."""
import glob
import os
import re
import sys
import xml.etree.ElementTree as ET

results, elapsed = sys.argv[1], int(sys.argv[2])
cases = []
missing = []
for phase in ("randomized", "serial"):
    files = glob.glob(os.path.join(results, phase + "*-swift-testing.xml"))
    if not files:
        missing.append(phase)
    for path in files:
        try:
            tree = ET.parse(path)
        except ET.ParseError as error:
            missing.append(f"{phase} ({error})")
            continue
        for case in tree.iter("testcase"):
            if case.find("skipped") is not None:
                outcome = "skipped"
            elif case.find("failure") is not None or case.find("error") is not None:
                outcome = "failed"
            else:
                outcome = "passed"
            name = case.get("classname", "") + "." + case.get("name", "")
            cases.append((float(case.get("time", "0")), name, outcome, phase))

c_passed = c_failed = None
try:
    with open(os.path.join(results, "c.log")) as log:
        for line in log:
            match = re.match(r"^(\d+) passed, (\d+) failed$", line.strip())
            if match:
                c_passed, c_failed = int(match.group(1)), int(match.group(2))
except OSError:
    pass

count = lambda outcome: sum(1 for case in cases if case[2] == outcome)
print()
print("== make test: summary")
print(f"Swift tests: {count('passed')} passed, {count('failed')} failed, {count('skipped')} skipped")
if c_passed is None:
    print("C checks: no result (see the C library's phase above)")
else:
    print(f"C checks: {c_passed} passed, {c_failed} failed")
for case in cases:
    if case[2] == "failed":
        print(f"  failed: {case[1]}")
for phase in missing:
    print(f"  no results from phase: {phase}")
print("slowest tests:")
for seconds, name, _, phase in sorted(cases, reverse=True)[:10]:
    print(f"  {seconds:8.2f} s  {name}  ({phase})")
print(f"whole run: {elapsed // 60} min {elapsed % 60} s")
sys.exit(1 if missing or c_passed is None else 0)
