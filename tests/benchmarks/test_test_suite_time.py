"""benchmarks/test_suite_time.py on JUnit XML that pytest itself writes.

Two throwaway suites (an "old" one and a "new" one with a test moved to
another file, one added, one removed, a class, parameters and a skip) are
run by pytest in a subprocess; the script must match tests by name across
files, rebuild node ids pytest accepts, and sum the times.
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from benchmarks import test_suite_time
from tests.conftest import PROJECT_ROOT


def _suite(root, files):
  for name, source in files.items():
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
  return root


def _pytest(root, *args):
  done = subprocess.run(
      [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider',
       '--rootdir', str(root), *args], cwd=root, capture_output=True,
      text=True, timeout=120)
  assert done.returncode in (0, 1), done.stdout + done.stderr
  return done


@pytest.fixture(scope='module')
def reports(tmp_path_factory):
  old = _suite(tmp_path_factory.mktemp('old'), {
      'tests/__init__.py': '',
      'tests/test_big.py': '''
          import time
          import pytest
          def test_slow():
            time.sleep(0.3)
          def test_moved():
            pass
          @pytest.mark.parametrize('n', [1, 2])
          def test_param(n):
            pass
          def test_removed():
            pass
          ''',
  })
  new = _suite(tmp_path_factory.mktemp('new'), {
      'tests/__init__.py': '',
      'tests/sub/__init__.py': '',
      'tests/test_big.py': '''
          import pytest
          def test_slow():
            pass
          @pytest.mark.parametrize('n', [1, 2])
          def test_param(n):
            pass
          ''',
      'tests/sub/test_split.py': '''
          import time
          import pytest
          def test_moved():
            pass
          class TestAdded:
            def test_added(self):
              time.sleep(0.2)
          @pytest.mark.skip(reason='no')
          def test_skipped_new():
            pass
          ''',
  })
  _pytest(old, 'tests', f'--junitxml={old / "old.xml"}')
  _pytest(new, 'tests', f'--junitxml={new / "new.xml"}')
  return old, new


def _existed_ids(old, report):
  """The node ids of the old run's tests that ``report`` (JUnit XML or a
  list of ids) holds, sorted."""
  _, existed = test_suite_time.compare(str(old / 'old.xml'), str(report))
  return sorted(c.node_id for c in existed)


def test_tests_are_matched_by_name_across_files(reports):
  old, new = reports
  result, existed = test_suite_time.compare(str(old / 'old.xml'),
                                            str(new / 'new.xml'))
  assert sorted(c.node_id for c in existed) == [
      'tests/sub/test_split.py::test_moved',
      'tests/test_big.py::test_param[1]', 'tests/test_big.py::test_param[2]',
      'tests/test_big.py::test_slow']
  assert result['old']['tests'] == 5 and result['new']['tests'] == 6
  assert result['new_added_since']['tests'] == 2
  assert result['old_not_in_new']['names'] == ['tests/test_big.py::test_removed']
  assert result['new']['outcomes'] == {'passed': 5, 'skipped': 1}
  # The old test_slow slept 0.3 s, its new twin nothing; test_added 0.2 s.
  assert result['old']['sum_s'] >= 0.3
  assert result['new_existed_at_old']['sum_s'] < 0.2
  assert result['new_added_since']['by_file_s'][
      'tests/sub/test_split.py'] >= 0.2
  assert result['ratio_existed_sum_to_old_sum'] < 0.5


def test_selected_node_ids_run_exactly_the_existed_tests(reports, tmp_path):
  old, new = reports
  ids = tmp_path / 'ids.txt'
  out = tmp_path / 'result.json'
  test_suite_time.main(['--old', str(old / 'old.xml'), '--new',
                        str(new / 'new.xml'), '--select', str(ids)])
  done = _pytest(new, *ids.read_text().split(),
                 f'--junitxml={tmp_path / "subset.xml"}')
  assert '4 passed' in done.stdout, done.stdout
  test_suite_time.main(['--old', str(old / 'old.xml'), '--new',
                        str(new / 'new.xml'), '--subset',
                        str(tmp_path / 'subset.xml'), '--out', str(out)])
  subset = json.loads(out.read_text())['subset_run']
  assert subset['tests'] == 4 and subset['outcomes'] == {'passed': 4}
  assert 0 < subset['ratio_to_old_wall']


def test_collected_node_ids_select_the_same_tests(reports, tmp_path):
  old, new = reports
  collected = _pytest(new, 'tests', '--collect-only').stdout  # -q: ids
  (tmp_path / 'ids.txt').write_text(collected)
  assert _existed_ids(old, tmp_path / 'ids.txt') == _existed_ids(
      old, new / 'new.xml')


def test_a_run_on_xdist_groups_matches_the_same_tests(reports, tmp_path):
  """make test's run (pytest-xdist, --dist loadgroup: a group per module,
  or tests/conftest.py's per_test_group) names each test with an
  ``@group`` suffix; it is the same test."""
  old, new = reports
  (new / 'conftest.py').write_text(textwrap.dedent(f'''
      import importlib.util
      import pytest
      spec = importlib.util.spec_from_file_location(
          'project_conftest', {os.path.join(PROJECT_ROOT, 'tests',
                                            'conftest.py')!r})
      project = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(project)
      @pytest.hookimpl(tryfirst=True)
      def pytest_collection_modifyitems(items):
        for item in items:
          item.add_marker(pytest.mark.xdist_group(
              project.per_test_group(item.nodeid) if 'param' in item.name
              else item.path.name))
      '''))
  try:
    _pytest(new, 'tests', '-n', '2', '--dist', 'loadgroup',
            f'--junitxml={tmp_path / "xdist.xml"}')
  finally:
    (new / 'conftest.py').unlink()
  report = (tmp_path / 'xdist.xml').read_text()
  assert '@test_split.py' in report
  assert 'test_param[1]@tests/test_big.py#test_param(1)' in report
  assert _existed_ids(old, tmp_path / 'xdist.xml') == _existed_ids(
      old, new / 'new.xml')
