#!/usr/bin/env bash
# Installs a local Apache Flink 1.19.1 and Beam's Flink job server into
# build/flink (a build step: `make flink`; nothing downloads at test time).
#
#   tools/flink_install.sh [PYTHON]      (PYTHON: a Python 3.10 with pip)
#
# - Flink: PyPI's apache-flink-libraries and apache-flink, pinned by sha256
#   (tools/flink/requirements.txt), `pip install --no-deps --target` into
#   build/flink/dist (never into the venv: they pin an old apache-beam);
#   FLINK_HOME is build/flink/dist/pyflink.
# - Beam's job server: org.apache.beam:beam-runners-flink-1.19 and its runtime
#   dependencies from Maven Central (tools/flink/pom.xml), every jar checked
#   against tools/flink/jars.sha256, plus a launcher jar
#   (build/flink/beam-flink-1.19-job-server.jar) whose manifest names the
#   main class and those jars: what Beam's --flink_job_server_jar runs with
#   `java -jar`.  Beam's prebuilt job-server jar is not served by the
#   registry these machines reach; 2.62.0 is the oldest beam-runners-flink-1.19
#   that is (the Python SDK is 2.61.0; the job server speaks the same Runner,
#   Job and Fn API protos).
# Exit status 3: Java or Maven is missing (the Flink tests then skip, saying
# so, except under CI=true where they fail).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-.venv/bin/python}
DIR=build/flink
SPEC=tools/flink
STAMP=$DIR/.installed
JOB_SERVER_JAR=$DIR/beam-flink-1.19-job-server.jar
MAIN_CLASS=org.apache.beam.runners.flink.FlinkJobServerDriver

for tool in java mvn jar; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "flink_install: '$tool' is not on PATH: Flink is not installed" \
         "(needs Java 17 and Maven)" >&2
    exit 3
  fi
done

inputs_hash=$(cat "$SPEC/requirements.txt" "$SPEC/pom.xml" "$SPEC/jars.sha256" \
              "$0" | sha256sum | cut -d' ' -f1)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$inputs_hash" ]; then
  exit 0
fi
start=$(date +%s)
rm -rf "$DIR/dist" "$DIR/job-server" "$JOB_SERVER_JAR" "$STAMP"
mkdir -p "$DIR"

echo "Installing Flink 1.19.1 from PyPI into $DIR/dist..."
"$PYTHON" -m pip install -q --no-deps --no-compile --require-hashes \
  --target "$DIR/dist" -r "$SPEC/requirements.txt"
FLINK_HOME=$DIR/dist/pyflink
for f in lib/flink-dist-1.19.1.jar bin/jobmanager.sh bin/taskmanager.sh \
         conf/config.yaml; do
  [ -e "$FLINK_HOME/$f" ] || { echo "flink_install: $FLINK_HOME/$f missing" >&2; exit 1; }
done
chmod +x "$FLINK_HOME"/bin/*

echo "Fetching Beam's Flink job server (beam-runners-flink-1.19) from Maven Central..."
mvn -B -q -C -f "$SPEC/pom.xml" dependency:copy-dependencies \
  -DoutputDirectory="$PWD/$DIR/job-server/lib" -DincludeScope=runtime
( cd "$DIR/job-server/lib" && sha256sum --quiet -c "$OLDPWD/$SPEC/jars.sha256" )
got=$(ls "$DIR/job-server/lib" | wc -l)
want=$(wc -l < "$SPEC/jars.sha256")
if [ "$got" != "$want" ]; then
  echo "flink_install: $got jars fetched, $want pinned in $SPEC/jars.sha256" >&2
  exit 1
fi

# The launcher jar: a manifest only (72-byte lines, continuations start with
# a space), its Class-Path relative to the jar's own folder.
"$PYTHON" - "$DIR" "$MAIN_CLASS" <<'EOF'
import os, sys
d, main = sys.argv[1:]
jars = ' '.join('job-server/lib/' + j
                for j in sorted(os.listdir(os.path.join(d, 'job-server/lib'))))
def wrap(line):
  out, line = [line[:72]], line[72:]
  while line:
    out.append(' ' + line[:71])
    line = line[71:]
  return '\n'.join(out)
with open(os.path.join(d, 'job-server/MANIFEST.MF'), 'w') as f:
  f.write('Manifest-Version: 1.0\n' + wrap('Main-Class: ' + main) + '\n'
          + wrap('Class-Path: ' + jars) + '\n')
EOF
jar --create --file "$JOB_SERVER_JAR" --manifest "$DIR/job-server/MANIFEST.MF"
echo "$inputs_hash" > "$STAMP"
echo "Flink installed in $DIR in $(( $(date +%s) - start )) s" \
     "(FLINK_HOME=$FLINK_HOME, job server $JOB_SERVER_JAR)"
