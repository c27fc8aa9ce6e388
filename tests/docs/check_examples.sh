#!/usr/bin/env bash
# Examples that cannot rot: runs every example that the tools' --help and README.md show, so a
# renamed flag or config key fails the tests instead of a user.
#
#   tests/docs/check_examples.sh BIN_DIR SOURCE_DIR [-v] [--keep]      (ctest -R docs_examples)
#   -v lists every example with its verdict; --keep leaves the sandboxes in $TMPDIR.
#
# The examples:
# - `fer-X --help` of fer-synth, fer-pack (and its subcommands), fer-dist-train, fer-predict and
#   fer-report: every line that starts with the tool's name, and every `--set key=value` shown in
#   an option's description;
# - README.md: every line of a fenced code block (backslash continuations joined, a line starting
#   with `[` continues a synopsis, `# comments` dropped; a line that starts with no known command,
#   e.g. sample output, is not an example), and every inline `code` span that is a fer tool or a
#   launch/ script with arguments, or a `--set key=value`.
# What is done with each:
# - a synopsis (it shows `[`, `|`, `...` or a placeholder this test cannot fill) is checked
#   against the tool's --help: every flag must be listed there, and a value shown after a flag
#   must be the flag's default;
# - a runnable one runs in a sandbox folder laid out like the repository root: configs/ and
#   launch/ of SOURCE_DIR, build/bin -> BIN_DIR, and what the example reads (data/synth,
#   data/fer2013, DATA, ~/fer2013, fer2013.csv, *.pt, photo.jpg, RUN_DIR ...) made from a tiny
#   dataset drawn once here (fer-synth --per-class 10 --size 16). mpirun gets --oversubscribe and
#   at most 2 ranks; fer-dist-train gets tiny-run overrides appended after the example's own
#   flags (one epoch, 2 steps, width 1/16), so the example's own --set keys are still checked;
# - GPU-only lines (--device cuda, FER_DEVICE=cuda, the GPU batch scripts) and Slurm lines are
#   checked by the real parsers without training: fer-dist-train --validate-only, the batch
#   scripts with FER_DRY_RUN=1 (they print the command they would launch, which then runs with
#   --validate-only), `sbatch --help` / `scancel --help` for their own flags, `ctest -N` for the
#   test selections passed to launch/run-tests.sh.
# A failure names the example, where it is shown (README.md line N, `fer-X --help`), the command
# that ran and the end of its output. Exit 0 when every example passes, 1 when one fails, 2 when
# the set-up fails.
set -uo pipefail

if (($# < 2)); then
  sed -n '2,35p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
fi
bin=$(cd "$1" && pwd) || exit 2
src=$(cd "$2" && pwd) || exit 2
verbose=0 keep=0
for a in "${@:3}"; do
  case $a in
    -v) verbose=1 ;;
    --keep) keep=1 ;;
    *) echo "check_examples: unknown argument $a" >&2; exit 2 ;;
  esac
done

readonly kTools=(fer-synth fer-pack fer-dist-train fer-predict fer-report)
readonly kPackSubcommands=(imagefolder csv verify inspect)
readonly kMaxRanks=2
readonly kExampleTimeout=120  # seconds per example; a tiny run takes a few
# Appended to every fer-dist-train that trains: one epoch of at most 2 steps of a 1/16-wide
# ResNet9, no report (fer-report has its own examples).
readonly kTinyRun=(--set train.epochs=1 --set train.max_steps=2 --set model.width=0.0625
                   --set train.batch_size=8 --set data.workers=1 --no-report)
# Placeholders the examples use, and what fills them (paths relative to the sandbox).
declare -rA kPlaceholders=(
  [DATA]=data/demo [DATASET]=data/demo [RUN]=runs/demo [RUN_DIR]=runs/demo
  [CKPT]=runs/fixture/checkpoints/best.pt [FILE]=configs/demo_cpu.yaml
  [CONFIG]=configs/demo_cpu.yaml [NP]=2 [JOBID]=4242 [OUT]=out [OUT_DIR]=out [DIR]=out
  [SRC]='~/fer2013' [FER2013_CSV]=fer2013.csv [IMAGE_OR_DIR]=photo.png)

for tool in "${kTools[@]}"; do
  [[ -x "$bin/$tool" ]] || { echo "check_examples: $bin/$tool not built" >&2; exit 2; }
done
tmp=$(mktemp -d "${TMPDIR:-/tmp}/fer-docs-examples.XXXXXX") || exit 2
if ((keep)); then echo "check_examples: keeping $tmp"; else trap 'rm -rf "$tmp"' EXIT; fi
start_s=$SECONDS

export PATH="$bin:$PATH"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
export OMPI_MCA_rmaps_base_oversubscribe=1  # also for the mpirun inside launch/ scripts
export OMP_NUM_THREADS=1
unset SLURM_JOB_ID FER_BIN FER_ROOT FER_DEVICE FER_LAUNCHER FER_CONFIG FER_DATA FER_RUN_DIR

# ---------------------------------------------------------------------------------------------
# The tiny dataset, a Kaggle-style CSV and a trained checkpoint the examples read.
fix=$tmp/fixture
mkdir -p "$fix"
setup() {
  if ! "$@" >"$fix/setup.log" 2>&1; then
    echo "check_examples: set-up step failed: $*" >&2
    tail -n 20 "$fix/setup.log" >&2
    exit 2
  fi
}
# fer2013.csv's layout (emotion,pixels,Usage): 7 classes x 3 usages x 2 rows of 48x48 pixels.
write_csv() {
  awk 'BEGIN {
    print "emotion,pixels,Usage"
    split("Training PublicTest PrivateTest", usage, " ")
    for (c = 0; c < 7; c++) for (u = 1; u <= 3; u++) for (r = 0; r < 2; r++) {
      pixels = ""
      for (i = 0; i < 2304; i++) pixels = pixels (i ? " " : "") (c * 37 + i * (r + 3) + u) % 256
      print c "," pixels "," usage[u]
    }
  }' >"$1"
}
setup fer-synth "$fix/images" --per-class 10 --size 16 --seed 1
setup fer-pack imagefolder "$fix/images" "$fix/dataset" --size 16 -q
setup write_csv "$fix/fer2013.csv"
setup fer-dist-train --config "$src/configs/demo_cpu.yaml" --data "$fix/dataset" --out "$fix/run" \
  "${kTinyRun[@]}"
fixture_checkpoint=$fix/run/checkpoints/best.pt
[[ -f "$fixture_checkpoint" ]] || { echo "check_examples: no $fixture_checkpoint" >&2; exit 2; }
fixture_images=()
while IFS= read -r f; do fixture_images+=("$f"); done < <(find "$fix/images/test" -name '*.png' | sort | head -n 3)

# ---------------------------------------------------------------------------------------------
# --help texts and what they say about each option (name, whether it takes a value, default).
mkdir -p "$tmp/help"
help_file() {  # help_file TOOL [SUBCOMMAND]: the path of its --help text
  echo "$tmp/help/$1${2:+-$2}.txt"
}
# One line per option name: NAME TAKES_VALUE DEFAULT ("-" when none shown).
options_file() { echo "$tmp/help/$1${2:+-$2}.options"; }
write_options() {
  awk '/^ +-/ {
    line = $0; sub(/^ +/, "", line)
    names = line; sub(/ .*/, "", names)
    rest = substr(line, length(names) + 1)
    # "--size INT=48": a type name follows after one space ("--flag Excludes: ..." has none)
    takes = (rest ~ /^ [^ ]/ && rest !~ /^ (Excludes|Needs):/) ? 1 : 0
    default = "-"
    if (takes && match(rest, /^ [^ ]*=[^ ]+/)) {
      default = substr(rest, 2, RLENGTH - 1); sub(/^[^=]*=/, "", default)
    }
    n = split(names, part, ",")
    for (i = 1; i <= n; i++) {
      p = part[i]; sub(/^!/, "", p); sub(/\{.*/, "", p)
      print p, takes, default
    }
  }' "$1" >"$2"
}
help_sources=()
for tool in "${kTools[@]}"; do
  subs=("")
  [[ "$tool" == fer-pack ]] && subs+=("${kPackSubcommands[@]}")
  for sub in "${subs[@]}"; do
    out=$(help_file "$tool" "$sub")
    if ! "$tool" ${sub:+"$sub"} --help >"$out" 2>&1; then
      echo "check_examples: $tool ${sub:+$sub }--help failed:" >&2; cat "$out" >&2; exit 2
    fi
    write_options "$out" "$(options_file "$tool" "$sub")"
    help_sources+=("$tool${sub:+ $sub}")
  done
done
[[ -s "$(options_file fer-dist-train)" ]] || { echo "check_examples: no options parsed" >&2; exit 2; }

# The options file of TOOL given its arguments (fer-pack: its subcommand's, with the main ones).
options_of() {  # options_of TOOL ARGS...
  local tool=$1; shift
  if [[ "$tool" == fer-pack ]]; then
    local a
    for a in "$@"; do
      if [[ " ${kPackSubcommands[*]} " == *" $a "* ]]; then
        cat "$(options_file fer-pack)" "$(options_file fer-pack "$a")" >"$tmp/help/pack-merged"
        echo "$tmp/help/pack-merged"; return
      fi
    done
  fi
  options_file "$tool"
}

# ---------------------------------------------------------------------------------------------
# The examples: SOURCE <tab> TEXT, one a line, in $tmp/examples.
examples=$tmp/examples
: >"$examples"
for source in "${help_sources[@]}"; do
  tool=${source%% *}
  sub=${source#"$tool"}; sub=${sub# }
  file=$(help_file "$tool" "$sub")
  # Lines that start with the tool's name (not its "fer-x: description" or "fer-pack 0.1.0: ..."),
  # and --set key=value in the other lines (option descriptions).
  awk -v tool="$tool" -v src="$source --help" '
    { line = $0; sub(/^ +/, "", line); split(line, w, " ") }
    index(line, tool " ") == 1 && w[2] !~ /:$/ { print src "\t" line; next }
    {
      while (match(line, /--set [A-Za-z0-9_.]+=[^ ,;)]+/)) {
        print src "\t" substr(line, RSTART, RLENGTH); line = substr(line, RSTART + RLENGTH)
      }
    }' "$file"
done | awk -F '\t' '!seen[$2]++' >>"$examples"  # subcommands repeat fer-pack's footer
# README.md: fenced code blocks and inline code spans.
awk -v src=README.md '
  function emit(n, text) { sub(/(^|[ \t])#.*$/, "", text); gsub(/[ \t]+/, " ", text)
                           sub(/^ /, "", text); sub(/ $/, "", text)
                           if (text != "") print src " line " n "\t" text }
  /^```/ { if (pending != "") emit(pending_n, pending); pending = ""; fence = !fence; next }
  fence {
    line = $0
    if (joining) { pending = pending " " line }
    else if (line ~ /^[ \t]*\[/ && pending != "") { pending = pending " " line }
    else { if (pending != "") emit(pending_n, pending); pending = line; pending_n = NR }
    joining = (pending ~ /\\[ \t]*$/)
    if (joining) sub(/\\[ \t]*$/, "", pending)
    next
  }
  {
    line = $0
    while (match(line, /`[^`]+`/)) {
      span = substr(line, RSTART + 1, RLENGTH - 2); line = substr(line, RSTART + RLENGTH)
      s = span; while (s ~ /^[A-Za-z_][A-Za-z0-9_]*=[^ ]* /) sub(/^[^ ]+ /, "", s)
      # A command with a flag or two arguments ("`fer-pack verify` checks..." names a command).
      # With environment assignments first it is a command line too.
      tools = "^((build\\/bin\\/)?fer-(synth|pack|dist-train|predict|report)|launch\\/[a-z_-]+\\.sh)"
      if ((s != span && s ~ (tools "$")) || s ~ (tools "( [^ ]+ [^ ]| -)") ||
          span ~ /^--set [^ ]+=[^ ]+$/) print src " line " NR "\t" span
    }
  }' "$src/README.md" >>"$examples"

# ---------------------------------------------------------------------------------------------
# Checking one example.
n_run=0 n_checked=0 n_synopsis=0 n_same=0 n_skipped=0 failures=0
declare -A first_seen  # command as run (relative to its sandbox) -> where it was first checked
declare -A verdict     # the same key -> ok | FAIL

where='' example='' out_file=''
report() {  # report ok|FAIL|skip KIND [MESSAGE]: one line per example
  local status=$1 kind=$2 message=${3:-}
  if [[ "$status" == FAIL ]]; then
    failures=$((failures + 1))
    printf 'FAIL  %s: %s\n      %s\n' "$where" "$example" "$message"
    [[ -n "$out_file" && -s "$out_file" ]] && tail -n 15 "$out_file" | sed 's/^/      | /'
  elif ((verbose)) || [[ "$status" == skip ]]; then
    printf '%-4s  %-9s %s: %s%s\n' "$status" "$kind" "$where" "$example" "${message:+ ($message)}"
  fi
}

sandbox=''
new_sandbox() {  # a fresh folder laid out like the repository root, in $sandbox
  sandbox=$(mktemp -d "$tmp/sandbox.XXXX")
  mkdir -p "$sandbox/build" "$sandbox/home"
  ln -s "$src/configs" "$sandbox/configs"
  ln -s "$src/launch" "$sandbox/launch"
  ln -s "$bin" "$sandbox/build/bin"
  # The multi-host examples' hostfile: this machine alone, through the same --hostfile path.
  printf 'localhost slots=2\n' >"$sandbox/hosts.txt"
}

# materialize ROLE PATH: makes what an example reads at PATH (relative to the sandbox).
materialize() {
  local role=$1 path=$2
  [[ -z "$path" || "$path" == /* ]] && return 0
  local dest=$sandbox/$path
  dest=${dest%/}
  [[ -e "$dest" || -L "$dest" ]] && return 0
  mkdir -p "$(dirname "$dest")"
  case $role in
    dataset) ln -s "$fix/dataset" "$dest" ;;
    imagefolder) ln -s "$fix/images" "$dest" ;;
    csv) cp "$fix/fer2013.csv" "$dest" ;;
    checkpoint) ln -s "$fixture_checkpoint" "$dest" ;;
    image) cp "${fixture_images[0]}" "$dest" ;;
    images) mkdir -p "$dest" && local i
            for i in "${!fixture_images[@]}"; do cp "${fixture_images[i]}" "$dest/face-$i.png"; done ;;
    run) cp -r "$fix/run" "$dest" ;;
  esac
}

# parse_args OPTIONS_FILE ARGS...: positionals in pos[], option values in opt[NAME].
declare -a pos=()
declare -A opt=()
parse_args() {
  local options=$1; shift
  pos=(); opt=()
  local -a args=("$@")
  local i=0 a name takes
  while ((i < ${#args[@]})); do
    a=${args[i]}
    if [[ "$a" == -?* && ! "$a" =~ ^-[0-9] ]]; then
      name=${a%%=*}
      if [[ "$a" == *=* ]]; then
        opt[$name]=${a#*=}
      else
        takes=$(awk -v n="$name" '$1 == n { print $2; exit }' "$options")
        if [[ "$takes" == 1 && $((i + 1)) -lt ${#args[@]} && "${args[i + 1]}" != -* ]]; then
          i=$((i + 1)); opt[$name]=${args[i]}
        else
          opt[$name]=''
        fi
      fi
    else
      pos+=("$a")
    fi
    i=$((i + 1))
  done
}

# prepare_tool TOOL ARGS...: makes the inputs of one tool invocation in the sandbox.
prepare_tool() {
  local tool=$1; shift
  parse_args "$(options_of "$tool" "$@")" "$@"
  case $tool in
    fer-pack)
      case ${pos[0]:-} in
        imagefolder) materialize imagefolder "${pos[1]:-}" ;;
        csv) materialize csv "${pos[1]:-}" ;;
        verify | inspect) materialize dataset "${pos[1]:-}" ;;
      esac ;;
    fer-dist-train)
      materialize dataset "${opt[--data]:-}"
      materialize checkpoint "${opt[--eval-only]:-}"
      [[ "${opt[--resume]:-auto}" != auto ]] && materialize checkpoint "${opt[--resume]}" ;;
    fer-predict)
      materialize checkpoint "${opt[--checkpoint]:-}"
      local p
      for p in "${pos[@]}"; do
        if [[ "$p" == */ || "${p##*/}" != *.* ]]; then materialize images "$p"
        else materialize image "$p"; fi
      done ;;
    fer-report) materialize run "${pos[0]:-}" ;;
  esac
}

# run_example KIND KEY COMMAND...: runs COMMAND in the sandbox (env assignments first are
# allowed), once per KEY; reports the verdict.
run_example() {
  local kind=$1 key=$2; shift 2
  if [[ -n "${first_seen[$key]:-}" ]]; then
    n_same=$((n_same + 1))
    if [[ "${verdict[$key]}" == ok ]]; then report ok same "as ${first_seen[$key]}"
    else report FAIL same "fails as ${first_seen[$key]}"; fi
    return
  fi
  first_seen[$key]=$where
  out_file=$sandbox/output.log
  local rc=0
  (cd "$sandbox" && HOME=$sandbox/home timeout "$kExampleTimeout" env "$@") </dev/null >"$out_file" 2>&1 ||
    rc=$?
  if ((rc == 0)); then
    verdict[$key]=ok
    report ok "$kind"
  else
    verdict[$key]=FAIL
    local shown=$*
    report FAIL "$kind" "exit $rc from (in a sandbox laid out like the repository): ${shown//$sandbox/SANDBOX}"
  fi
  [[ "$kind" == run ]] && n_run=$((n_run + 1)) || n_checked=$((n_checked + 1))
}

# A synopsis: every flag must be in the tool's --help, a value shown after a flag its default.
check_synopsis() {
  local tool=$1; shift
  n_synopsis=$((n_synopsis + 1))
  if [[ "$tool" == launch/* ]]; then
    [[ -x "$src/$tool" ]] && { report ok synopsis; return; }
    report FAIL synopsis "$src/$tool is not an executable script"; return
  fi
  local options
  options=$(options_of "$tool" "$@")
  local -a words=("$@")
  local i w piece name value line problems=''
  for ((i = 0; i < ${#words[@]}; i++)); do
    w=${words[i]//[\[\]]/}
    local -a pieces=()
    IFS='|' read -ra pieces <<<"$w"
    for piece in "${pieces[@]}"; do
      [[ "$piece" == -?* && ! "$piece" =~ ^-[0-9] ]] || continue
      name=${piece%%=*}
      line=$(awk -v n="$name" '$1 == n { print; exit }' "$options")
      if [[ -z "$line" ]]; then
        problems+=" $name is not an option of $tool;"
        continue
      fi
      value=${words[i + 1]:-}
      value=${value//[\[\]]/}
      # "[--size 48]": 48 must be the default --help shows (placeholders and choices are not).
      if [[ "${words[i]}" == "[$piece" && "$w" != *'|'* && "$value" =~ ^[a-z0-9./]+$ &&
            "$(echo "$line" | cut -d' ' -f3)" != - ]]; then
        local default
        default=$(echo "$line" | cut -d' ' -f3)
        if ! awk -v a="$value" -v b="$default" 'BEGIN { exit !(a == b || (a + 0 == b + 0 && a ~ /^[0-9.]+$/)) }'; then
          problems+=" $name shows $value but its default is $default;"
        fi
      fi
    done
  done
  if [[ -n "$problems" ]]; then
    out_file=''
    report FAIL synopsis "against \`$tool --help\`:$problems"
  else
    report ok synopsis
  fi
}

# fer-dist-train's arguments in args[] (parsed into opt[]) get --validate-only when the example
# needs a GPU (or is a lone --set), else the tiny-run overrides; sets kind (run | check).
finish_train_args() {
  if [[ -n "${opt[--validate-only]+x}" ]]; then
    kind=check
  elif ((validate)) || [[ "${opt[--device]:-$device}" == cuda* ]]; then
    kind=check; args+=(--validate-only)
  elif [[ -z "${opt[--eval-only]+x}" ]]; then
    args+=("${kTinyRun[@]}")
  fi
}

min_ranks() { local n=$1; ((n > kMaxRanks)) && n=$kMaxRanks; echo "$n"; }

# Checks one example: SOURCE TEXT.
check_example() {
  where=$1 example=$2 out_file=''
  local -a words env=()
  read -ra words <<<"$example"
  # Synopsis: brackets, alternatives, ellipses, or a placeholder this test cannot fill.
  local synopsis=0 w
  [[ "$example" == *'['* || "$example" == *'|'* || "$example" == *'...'* || "$example" == *'…'* ]] &&
    synopsis=1
  # Placeholders filled, ~ is the sandbox's home.
  local -a filled=()
  for w in "${words[@]}"; do
    [[ -n "${kPlaceholders[$w]:-}" ]] && w=${kPlaceholders[$w]}
    # ~ is the sandbox's home: ~/x becomes home/x, the same folder.
    if [[ "$w" == '~/'* ]]; then filled+=("home/${w#'~/'}")
    elif [[ "$w" =~ ^[A-Z][A-Z0-9_]*$ && ${#w} -gt 1 ]]; then synopsis=1; filled+=("$w")
    else filled+=("$w"); fi
  done
  words=("${filled[@]}")
  while ((${#words[@]})) && [[ "${words[0]}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; do
    env+=("${words[0]}"); words=("${words[@]:1}")
  done
  (( ${#words[@]} )) || return 0
  # A lone --set key=value: fer-dist-train --validate-only with it.
  local validate=0
  if [[ "${words[0]}" == --set ]]; then
    validate=1 words=(fer-dist-train --data data/synth --out runs/set-check "${words[@]}")
  fi
  local first=${words[0]} tool=''
  case $first in
    fer-* | build/bin/fer-*) tool=${first##*/} ;;
    mpirun | mpiexec | launch/*.sh | sbatch | scancel | srun | scontrol) ;;
    *) n_skipped=$((n_skipped + 1))  # e.g. sample output
       ((verbose)) && report skip - "not a command"
       return ;;
  esac
  if [[ -n "$tool" && " ${kTools[*]} " != *" $tool "* ]]; then
    report FAIL synopsis "$tool is not one of the tools (${kTools[*]})"; return
  fi
  if ((synopsis)); then
    if [[ -n "$tool" || "$first" == launch/* ]]; then check_synopsis "${tool:-$first}" "${words[@]:1}"
    else n_skipped=$((n_skipped + 1)); report skip synopsis "not a fer tool"; fi
    return
  fi
  local device=''
  for w in "${env[@]}"; do [[ "$w" == FER_DEVICE=* ]] && device=${w#FER_DEVICE=}; done
  local -a args=("${words[@]}") cmd
  local kind=run
  new_sandbox
  case $first in
    fer-* | build/bin/fer-*)
      prepare_tool "$tool" "${words[@]:1}"
      [[ "$tool" == fer-dist-train ]] && finish_train_args
      run_example "$kind" "${env[*]} ${args[*]}" "${env[@]}" "${args[@]}" ;;
    mpirun | mpiexec)
      local i=1 np_at=-1
      while ((i < ${#args[@]})) && [[ "${args[i]##*/}" != fer-* ]]; do
        [[ "${args[i]}" == -np || "${args[i]}" == -n || "${args[i]}" == --np ]] && np_at=$((i + 1))
        i=$((i + 1))
      done
      if ((i >= ${#args[@]})); then
        report FAIL run "no fer tool after $first"; return
      fi
      ((np_at > 0)) && args[np_at]=$(min_ranks "${args[np_at]}")
      tool=${args[i]##*/}
      prepare_tool "$tool" "${args[@]:i+1}"
      [[ "$tool" == fer-dist-train ]] && finish_train_args
      cmd=("${args[0]}" --oversubscribe "${args[@]:1}")
      run_example "$kind" "${env[*]} ${cmd[*]}" "${env[@]}" "${cmd[@]}" ;;
    launch/mpirun.sh)
      # launch/mpirun.sh [--its-options ...] NP CONFIG DATA RUN_DIR [fer-dist-train args]
      local k=1
      while [[ "${args[k]:-}" == -* ]]; do
        [[ "${args[k]}" == *=* ]] && k=$((k + 1)) || k=$((k + 2))
      done
      args[k]=$(min_ranks "${args[k]:-1}")
      materialize dataset "${args[k + 2]:-}"
      prepare_tool fer-dist-train "${args[@]:k+4}"
      finish_train_args
      run_example "$kind" "${env[*]} ${args[*]}" "${env[@]}" bash "${args[@]}" ;;
    launch/quickstart.sh)
      # Its own set-up steps (packages, build) are skipped; the rest runs on a reduced size.
      run_example run "quickstart" "${env[@]}" SKIP_SETUP=1 PER_CLASS=25 EPOCHS=1 NP=2 JOBS=1 \
        bash "${args[@]}" ;;
    launch/run-tests.sh)
      # It builds and runs this very suite: checked, not run. Its arguments go to ctest.
      n_checked=$((n_checked + 1))
      out_file=$sandbox/output.log
      if ! bash -n "$src/$first" 2>"$out_file"; then report FAIL check "bash -n $first"; return; fi
      if ((${#args[@]} > 1)); then
        (cd "$bin/.." && ctest -N "${args[@]:1}") >"$out_file" 2>&1
        local total
        total=$(sed -n 's/^Total Tests: \([0-9]*\)/\1/p' "$out_file")
        if [[ -z "$total" || "$total" == 0 ]]; then
          # A test binary not built yet lists no test cases (only NAME_NOT_BUILT).
          if (cd "$bin/.." && ctest -N) 2>/dev/null | grep '_NOT_BUILT' >/dev/null; then
            report skip check "ctest -N ${args[*]:1}: test binaries not all built, not checked"
            return
          fi
          report FAIL check "ctest -N ${args[*]:1} selects no test"; return
        fi
      fi
      report ok check ;;
    launch/*.sh)
      n_checked=$((n_checked + 1))
      out_file=$sandbox/output.log
      if [[ ! -x "$src/$first" ]] || ! bash -n "$src/$first" 2>"$out_file"; then
        report FAIL check "$first is not an executable bash script"; return
      fi
      for w in "${args[@]:1}"; do
        grep -qF -- "$w" "$src/$first" || { report FAIL check "$first does not read $w"; return; }
      done
      report ok check ;;
    sbatch) check_sbatch "${args[@]:1}" ;;
    scancel | srun | scontrol)
      n_checked=$((n_checked + 1))
      local problem
      problem=$(slurm_flags_problem "${args[@]}")
      if [[ "$problem" == skip:* ]]; then report skip check "${problem#skip: }"
      elif [[ -n "$problem" ]]; then report FAIL check "$problem"
      else report ok check; fi ;;
  esac
}

# slurm_flags_problem COMMAND ARGS...: prints what is wrong with the flags among ARGS according to
# `COMMAND --help` (nothing when all are listed; "skip: ..." when COMMAND is not installed).
# Slurm's commands read a slurm.conf even for --help: a minimal one is enough.
slurm_conf=$tmp/slurm.conf
printf 'ClusterName=docs\nSlurmctldHost=localhost\nNodeName=localhost CPUs=1\nPartitionName=docs Nodes=localhost Default=YES\n' >"$slurm_conf"
slurm_flags_problem() {
  local command=$1; shift
  if ! command -v "$command" >/dev/null; then echo "skip: $command not installed: its flags are not checked"; return; fi
  local help
  if ! help=$(SLURM_CONF=$slurm_conf "$command" --help 2>&1); then
    echo "skip: $command --help failed, its flags are not checked: ${help:0:200}"; return
  fi
  local w
  for w in "$@"; do
    [[ "$w" == -?* ]] || continue
    grep -qE -- "(^|[ ,])${w%%=*}([ ,=[]|$)" <<<"$help" || { echo "$command --help lists no ${w%%=*}"; return; }
  done
}

# sbatch [sbatch flags] SCRIPT CONFIG DATA RUN_DIR [fer-dist-train args]: sbatch's flags against
# `sbatch --help`; the script with FER_DRY_RUN=1 prints the command it would launch, which then
# runs with --validate-only.
check_sbatch() {
  local -a args=("$@") flags=()
  out_file=$sandbox/output.log
  fail_check() { n_checked=$((n_checked + 1)); report FAIL check "$1"; }
  while ((${#args[@]})) && [[ "${args[0]}" == -* ]]; do flags+=("${args[0]}"); args=("${args[@]:1}"); done
  local script=${args[0]:-}
  if [[ "$script" != launch/slurm/*.sbatch || ! -f "$src/$script" ]]; then
    fail_check "no batch script $script in launch/slurm/"; return
  fi
  local problem
  problem=$(slurm_flags_problem sbatch "${flags[@]}")
  if [[ "$problem" == skip:* ]]; then
    report skip check "${problem#skip: }"  # and the script is still checked below
  elif [[ -n "$problem" ]]; then
    fail_check "$problem"; return
  fi
  # The allocation the flags (or the script's #SBATCH lines) ask for, at most 2 tasks here.
  local ntasks nodes per_node
  ntasks=$(printf '%s\n' "${flags[@]}" | sed -n 's/^--ntasks=//p' | tail -n 1)
  [[ -n "$ntasks" ]] || ntasks=$(sed -n 's/^#SBATCH --ntasks=//p' "$src/$script" | tail -n 1)
  nodes=$(printf '%s\n' "${flags[@]}" | sed -n 's/^--nodes=//p' | tail -n 1)
  [[ -n "$nodes" ]] || nodes=$(sed -n 's/^#SBATCH --nodes=//p' "$src/$script" | tail -n 1)
  per_node=$(sed -n 's/^#SBATCH --ntasks-per-node=//p' "$src/$script" | tail -n 1)
  [[ -n "$ntasks" ]] || ntasks=$((${nodes:-1} * ${per_node:-1}))
  materialize dataset "${args[2]:-}"
  prepare_tool fer-dist-train "${args[@]:4}"
  if ! (cd "$sandbox" && FER_DRY_RUN=1 FER_LAUNCHER=mpirun SLURM_NTASKS=$(min_ranks "$ntasks") \
          SLURM_CPUS_PER_TASK=1 SLURM_SUBMIT_DIR=$sandbox timeout 30 bash "${args[@]}") \
        </dev/null >"$out_file" 2>&1; then
    fail_check "FER_DRY_RUN=1 bash ${args[*]} failed"; return
  fi
  local line
  line=$(sed -n 's/^fer_job: dry run: //p' "$out_file" | tail -n 1)
  if [[ -z "$line" ]]; then
    fail_check "FER_DRY_RUN=1 bash $script printed no 'fer_job: dry run: COMMAND' line"
    return
  fi
  local -a cmd
  eval "cmd=($line)"
  run_example check "${script} ${args[*]:1}" "${cmd[@]}" --validate-only
}

while IFS=$'\t' read -r source text; do
  check_example "$source" "$text" </dev/null  # no example reads the list
done <"$examples"

from_help=$(grep -c -v '^README' "$examples")
from_readme=$(grep -c '^README' "$examples")
printf 'docs examples: %d from --help, %d from README.md: %d run, %d checked without running ' \
  "$from_help" "$from_readme" "$n_run" "$n_checked"
printf '(GPU, Slurm, scripts), %d synopses, %d the same as another, %d not commands; %d failed ' \
  "$n_synopsis" "$n_same" "$n_skipped" "$failures"
printf '(%d s)\n' $((SECONDS - start_s))
((failures == 0))
