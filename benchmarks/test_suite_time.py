"""How long do the tests that existed at an older commit take now? (issue 18)

Two pytest JUnit XML reports (``--junitxml``) of fresh clones run one after
the other on the same machine: OLD, the suite at the older commit, and NEW,
today's.  A test of NEW *existed* at the older commit when OLD has a test of
the same name (the function name with its parameters, file ignored: the
monolith splits moved tests between files; a test renamed since counts as
added).  NEW may also be the node ids `pytest --collect-only -q` prints.
``--select FILE`` writes NEW's node ids of those tests, one per
line, for a third run of only them (``pytest @FILE``: ids may hold spaces), which charges
the shared fixtures' set-up to them alone; ``--subset XML`` scores that run.

  .venv/bin/python benchmarks/test_suite_time.py --old old.xml --new new.xml \\
      [--subset subset.xml] [--select ids.txt] [--out result.json]

JUnit's per-test time is set-up + call + tear-down, so a session fixture's
cost lands on the first test that uses it: per-test sums are reported for
each group, and the suite-level ratio is taken from whole runs.
"""

import argparse
import collections
import json
import os
import sys
import xml.etree.ElementTree as ElementTree
from typing import Dict, List, NamedTuple


class Case(NamedTuple):
  node_id: str   # tests/x/test_y.py::test_z[param] (pytest's)
  name: str      # test_z[param]
  seconds: float
  outcome: str   # passed | failed | error | skipped


def _without_xdist_group(name: str) -> str:
  """A test's name without the ``@group`` that pytest-xdist's loadgroup
  appends to it (``make test``: tests/conftest.py sets the groups)."""
  head, at, group = name.rpartition('@')
  return head if at and ']' not in group else name


def read_report(path: str) -> Dict[str, object]:
  """The cases and the suite's own wall time of one JUnit XML report."""
  root = ElementTree.parse(path).getroot()
  suites = [root] if root.tag == 'testsuite' else root.findall('testsuite')
  cases: List[Case] = []
  wall = 0.0
  for suite in suites:
    wall += float(suite.get('time', 0))
    for case in suite.iter('testcase'):
      module = case.get('classname', '')
      parts = module.split('.')
      # pytest writes classname as the dotted module path (and the class,
      # for tests in a class): back to the file path of the node id.
      path_parts, klass = parts, []
      while path_parts and not path_parts[-1].startswith('test'):
        klass.insert(0, path_parts.pop())
      file_path = '/'.join(path_parts) + '.py'
      name = _without_xdist_group(case.get('name'))
      node_id = '::'.join([file_path] + klass + [name])
      outcome = 'passed'
      for tag in ('failure', 'error', 'skipped'):
        if case.find(tag) is not None:
          outcome = {'failure': 'failed'}.get(tag, tag)
      cases.append(Case(node_id, name,
                        float(case.get('time', 0)), outcome))
  return {'cases': cases, 'wall_s': wall}


def read_node_ids(path: str) -> Dict[str, object]:
  """The tests of ``pytest --collect-only -q`` output (no times): to choose
  the --select run before the whole suite has run."""
  cases = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if '::' in line and not line.startswith(('=', '-')):
        cases.append(Case(line, line.split('::')[-1], 0.0, 'collected'))
  return {'cases': cases, 'wall_s': 0.0}


def read_any(path: str) -> Dict[str, object]:
  return read_report(path) if path.endswith('.xml') else read_node_ids(path)


def split_by_origin(old: List[Case], new: List[Case]):
  """NEW's cases that existed in OLD (by name), and those added since."""
  old_names = collections.Counter(c.name for c in old)
  existed = [c for c in new if old_names[c.name]]
  added = [c for c in new if not old_names[c.name]]
  new_names = {c.name for c in new}
  gone = [c for c in old if c.name not in new_names]
  return existed, added, gone


def _total(cases: List[Case]) -> float:
  return round(sum(c.seconds for c in cases), 1)


def _outcomes(cases: List[Case]) -> Dict[str, int]:
  return dict(collections.Counter(c.outcome for c in cases))


def compare(old_xml: str, new_xml: str, subset_xml: str = None):
  old, new = read_report(old_xml), read_any(new_xml)
  existed, added, gone = split_by_origin(old['cases'], new['cases'])
  result = {
      'old': {'tests': len(old['cases']), 'wall_s': round(old['wall_s'], 1),
              'sum_s': _total(old['cases']),
              'outcomes': _outcomes(old['cases'])},
      'new': {'tests': len(new['cases']), 'wall_s': round(new['wall_s'], 1),
              'sum_s': _total(new['cases']),
              'outcomes': _outcomes(new['cases'])},
      'new_existed_at_old': {'tests': len(existed), 'sum_s': _total(existed)},
      'new_added_since': {'tests': len(added), 'sum_s': _total(added)},
      'old_not_in_new': {'tests': len(gone), 'sum_s': _total(gone),
                         'names': sorted(c.node_id for c in gone)},
  }
  by_file = collections.defaultdict(float)
  for case in added:
    by_file[case.node_id.split('::')[0]] += case.seconds
  result['new_added_since']['by_file_s'] = {
      f: round(s, 1) for f, s in sorted(by_file.items(), key=lambda x: -x[1])}
  if subset_xml:
    subset = read_report(subset_xml)
    result['subset_run'] = {
        'tests': len(subset['cases']), 'wall_s': round(subset['wall_s'], 1),
        'sum_s': _total(subset['cases']),
        'outcomes': _outcomes(subset['cases']),
        'ratio_to_old_wall': round(subset['wall_s'] / old['wall_s'], 3)}
  result['ratio_existed_sum_to_old_sum'] = round(
      _total(existed) / max(_total(old['cases']), 1e-9), 3)
  return result, existed


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--old', required=True, help='JUnit XML, older commit')
  parser.add_argument('--new', required=True,
                      help='JUnit XML, today (or `pytest --collect-only -q` '
                      'output, for --select)')
  parser.add_argument('--subset', help='JUnit XML of a run of --select ids')
  parser.add_argument('--select', help='write the existed tests\' node ids')
  parser.add_argument('--out', help='write the result as JSON')
  args = parser.parse_args(argv)
  result, existed = compare(args.old, args.new, args.subset)
  if args.select:
    with open(args.select, 'w') as f:
      f.writelines(c.node_id + '\n' for c in existed)
  text = json.dumps(result, indent=2)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      f.write(text + '\n')
  print(text)


if __name__ == '__main__':
  sys.exit(main())
