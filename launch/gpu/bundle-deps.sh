#!/usr/bin/env bash
# Bundles the trainer's non-LibTorch dependencies for a GPU machine that has a CUDA torch, nvcc
# and cmake but not the rest: Open MPI (launcher, plugins), HDF5, spdlog, fmt, yaml-cpp, CLI11,
# nlohmann-json, libcrypto, GoogleTest (for tests/gpu) and every shared library they load.
#
# Usage: launch/gpu/bundle-deps.sh OUT [--cache DIR] [--max-mib 40] [--keep-stage]
#
# Runs on Debian 12 (bookworm) x86_64: `apt-get download`s the packages (no root needed, no
# install), unpacks them with `dpkg-deb -x`, keeps the headers, CMake package files, shared
# libraries, MPI launcher and plugins the trainer-only build needs, and follows every library's
# ELF NEEDED entries until nothing is missing but glibc, libgcc_s and libstdc++ (which every
# system running a CUDA torch has). Docs, man pages, static libraries (but GoogleTest's), Fortran,
# OpenSHMEM, MPI-IO and the network plugins for UCX/libfabric/PSM/verbs are left out: the bundle
# runs on one machine over shared memory, or several over TCP.
#
# OUT gets usr/{bin,include,lib,share} (Debian's layout, made relocatable), env.sh, PACKAGES
# (the Debian packages and versions it holds files of) and FILES (those files, by their path in
# the packages). On the target:
#   . OUT/env.sh     # PATH, LD_LIBRARY_PATH, CMAKE_PREFIX_PATH, OPAL_PREFIX, ...
#   launch/build-gpu.sh && mpirun -np 2 build-gpu/bin/fer-dist-train ...
# The target needs x86_64 Linux with glibc >= 2.36 (Debian 12's) and libstdc++ of GCC >= 12
# (e.g. Debian 12+, Ubuntu 23.04+, RHEL 10), plus a C++ compiler for the build.
#
# --cache DIR   where downloaded .deb files are kept between runs
#               (default: ${XDG_CACHE_HOME:-~/.cache}/fer-dist/debs)
# --max-mib N   fail when OUT is larger than N MiB (default 40)
# --keep-stage  keep the unpacked packages in OUT.stage (to see what was left out)
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; }
die() { echo "bundle-deps: error: $*" >&2; exit 1; }

out=""
cache="${XDG_CACHE_HOME:-$HOME/.cache}/fer-dist/debs"
max_mib=40
keep_stage=0
while (($#)); do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --cache) cache=${2:?--cache needs a folder}; shift 2 ;;
    --max-mib) max_mib=${2:?--max-mib needs a number}; shift 2 ;;
    --keep-stage) keep_stage=1; shift ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "$out" ]] || die "one OUT folder only (got '$out' and '$1')"; out=$1; shift ;;
  esac
done
[[ -n "$out" ]] || { usage >&2; exit 2; }
[[ "$max_mib" =~ ^[0-9]+$ ]] || die "--max-mib must be a whole number of MiB, not '$max_mib'"

arch=x86_64-linux-gnu
# shellcheck disable=SC1091
. /etc/os-release 2>/dev/null || true
[[ "${ID:-}" == debian && "${VERSION_ID:-}" == 12 ]] ||
  die "needs Debian 12 (bookworm): the package names below are bookworm's (this is ${PRETTY_NAME:-unknown})"
[[ "$(dpkg --print-architecture)" == amd64 ]] || die "needs amd64 (x86_64)"
for tool in apt-get apt-cache dpkg-deb readelf; do
  command -v "$tool" >/dev/null || die "$tool not found (readelf: apt-get install binutils)"
done

# The runtime packages the trainer loads; their Depends closure is downloaded and the ELF walk
# below keeps only what is really loaded.
runtime_roots=(openmpi-bin libopenmpi3 openmpi-common libhdf5-103-1 libspdlog1.10 libfmt9
               libyaml-cpp0.7 libssl3 libcurl4 libsz2 zlib1g)
# Development files (headers, CMake packages, link symlinks, h5cc); not followed further.
dev_packages=(libopenmpi-dev libhdf5-dev hdf5-helpers libspdlog-dev libfmt-dev libyaml-cpp-dev
              libcli11-dev nlohmann-json3-dev libssl-dev libgtest-dev zlib1g-dev
              libcurl4-openssl-dev libaec-dev)
# What every glibc system running a CUDA torch has; never bundled.
base_sonames='^(libc\.so\.6|libm\.so\.6|libpthread\.so\.0|libdl\.so\.2|librt\.so\.1|libresolv\.so\.2|libutil\.so\.1|libanl\.so\.1|ld-linux-x86-64\.so\.2|libgcc_s\.so\.1|libstdc\+\+\.so\.6)$'
# Open MPI plugins left out: other networks (UCX, libfabric, PSM, verbs), OpenSHMEM, MPI-IO,
# monitoring and checkpointing. Without them Open MPI uses shared memory and TCP.
mpi_plugin_prune='ucx|ofi|psm|openib|_uct|_io_|fbtl|fcoll|_fs_|sharedfp|monitoring|vprotocol|memheap|scoll|spml|sshmem|_atomic_|reachable_netlink|flux|jsm|_mtl_|treematch|gridengine|simulator|compress|_crs_|dbg_msgq|common_ompio|common_ofi|common_ucx|common_monitoring'

start=$(date +%s)
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")
stage="$out.stage"
rm -rf "$out" "$stage"
mkdir -p "$out" "$stage"

# --- 1. the package closure -----------------------------------------------------------------
closure=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks \
            --no-replaces --no-enhances "${runtime_roots[@]}" 2>/dev/null |
          grep -v '^ ' | grep -v '^<' | sort -u |
          grep -E '^(lib|openmpi-|zlib1g$|ocl-icd-|ibverbs-)' |
          grep -vE '^(libc6|libgcc-s1|libstdc\+\+6|libpam.*|libsemanage.*|libaudit.*|libdebian-installer.*|libnewt.*|libslang.*|libtextwrap.*|libreadline.*|libdb5\.3|libcap-ng0)$' ||
          true)
[[ -n "$closure" ]] ||
  die "apt-cache knows none of ${runtime_roots[*]}: run apt-get update (Debian 12 sources needed)"
read -r -a packages <<<"$(echo $closure "${dev_packages[@]}" | tr ' ' '\n' | sort -u | tr '\n' ' ')"
echo "bundle-deps: ${#packages[@]} packages (closure of ${#runtime_roots[@]} runtime roots + ${#dev_packages[@]} -dev)"

# --- 2. download (cached) and unpack ----------------------------------------------------------
want=()
declare -A deb_of=() version_of=()
while read -r p v; do version_of[$p]=$v; done < <(apt-cache policy "${packages[@]}" 2>/dev/null |
  awk '/^[^ ].*:$/ { p = substr($1, 1, length($1) - 1) } /^  Candidate:/ { print p, $2 }')
for p in "${packages[@]}"; do
  v=${version_of[$p]:-}
  [[ -n "$v" && "$v" != "(none)" ]] || die "no candidate version of $p (apt-get update?)"
  f=$(compgen -G "$cache/${p}_${v//:/%3a}_*.deb" | head -n1 || true)
  if [[ -z "$f" ]]; then want+=("$p=$v"); else deb_of[$p]=$f; fi
done
if ((${#want[@]})); then
  echo "bundle-deps: downloading ${#want[@]} package(s) into $cache"
  # (As root apt warns that it cannot drop privileges into the cache folder: harmless here.)
  (cd "$cache" && apt-get download -q "${want[@]}" >/dev/null 2> >(grep -v 'unsandboxed as root' >&2)) ||
    die "apt-get download failed (network? apt sources?): ${want[*]}"
  for w in "${want[@]}"; do
    p=${w%%=*}; v=${w#*=}
    deb_of[$p]=$(compgen -G "$cache/${p}_${v//:/%3a}_*.deb" | head -n1) ||
      die "apt-get download left no $p $v in $cache"
  done
fi
for p in "${packages[@]}"; do printf '%s\0' "${deb_of[$p]}"; done |
  xargs -0 -P "$(nproc)" -I{} dpkg-deb -x {} "$stage"
# Which package each file comes from (Debian 12 still ships some libraries in /lib: merged below).
for p in "${packages[@]}"; do printf '%s %s\0' "$p" "${deb_of[$p]}"; done |
  xargs -0 -P "$(nproc)" -I{} sh -c 'set -- {}; dpkg-deb -c "$2" | awk -v p="$1" "{ print p, \$6 }"' |
  sed "s| \./lib/$arch/| ./usr/lib/$arch/|; s| \./| |" >"$stage.contents"
# One library folder: Debian 12 still ships some libraries in /lib (zlib, ...).
if [[ -d "$stage/lib/$arch" ]]; then
  cp -a "$stage/lib/$arch/." "$stage/usr/lib/$arch/"
  rm -rf "${stage:?}/lib"
fi

# --- 3. what to keep --------------------------------------------------------------------------
L=usr/lib/$arch
keep=()          # paths relative to the stage, files or symlinks
elf_queue=()     # ELF files whose NEEDED entries are still to follow
declare -A kept=()
# in_stage REL: where the symlink chain from REL ends inside the stage (absolute targets such as
# /lib/x86_64-linux-gnu/libz.so.1 are the stage's), relative to it; "" when it leaves the stage.
in_stage() {
  local rel=$1 target i
  for ((i = 0; i < 16; i++)); do
    if [[ ! -L "$stage/$rel" ]]; then
      [[ -e "$stage/$rel" ]] && echo "$rel"
      return 0
    fi
    target=$(readlink "$stage/$rel")
    if [[ "$target" == /* ]]; then
      target=${target#/}
      [[ "$target" == lib/$arch/* ]] && target=$L/${target#lib/"$arch"/}
    else
      target=$(dirname "$rel")/$target
    fi
    rel=$(realpath -m --relative-to="$stage" "$stage/$target")
  done
  return 0
}
is_elf() { local magic; IFS= read -r -n4 magic <"$1" 2>/dev/null; [[ "$magic" == $'\x7fELF' ]]; }
add() {  # add PATH...: keep these (relative) paths; ELF files are followed
  local rel
  for rel in "$@"; do
    [[ -e "$stage/$rel" || -L "$stage/$rel" ]] || die "expected $rel in the unpacked packages"
    [[ -z "${kept[$rel]:-}" ]] || continue
    kept[$rel]=1
    keep+=("$rel")
    if [[ -L "$stage/$rel" ]]; then  # keep what a symlink points at, inside the stage
      local target
      target=$(readlink "$stage/$rel")
      if [[ "$target" == /* ]]; then
        target=${target#/}
        [[ "$target" == lib/$arch/* ]] && target=$L/${target#lib/"$arch"/}
      else
        target=$(dirname "$rel")/$target
      fi
      target=$(realpath -m --relative-to="$stage" "$stage/$target")
      [[ -e "$stage/$target" || -L "$stage/$target" ]] && add "$target"
    elif [[ "$rel" == usr/bin/* || "$rel" == *.so* ]] && is_elf "$stage/$rel"; then
      elf_queue+=("$rel")
    fi
  done
}
add_tree() {  # add_tree DIR...: every file and symlink under DIR but Fortran modules
  local d f
  for d in "$@"; do
    [[ -d "$stage/$d" ]] || die "expected folder $d in the unpacked packages"
    while IFS= read -r f; do add "${f#"$stage"/}"; done < \
      <(find "$stage/$d" \( -type f -o -type l \) ! -name '*.mod' ! -name '*.f90')
  done
}

# Libraries the trainer links, MPI's launcher and compiler wrapper, and the plugins kept.
for lib in libmpi.so.40 libhdf5_serial.so.103 libspdlog.so.1.10 libfmt.so.9 libyaml-cpp.so.0.7 \
           libcrypto.so.3 libz.so.1; do
  add "$L/$lib"
done
for bin in orterun orted opal_wrapper ompi_info; do add "usr/bin/$bin"; done
while IFS= read -r f; do
  base=$(basename "$f")
  [[ "$base" =~ $mpi_plugin_prune ]] || add "${f#"$stage"/}"
done < <(find "$stage/$L/openmpi/lib/openmpi3" "$stage/$L/pmix2/lib/pmix" -name '*.so' \
              \( -type f -o -type l \))
add usr/bin/h5cc "$L/libhdf5_serial.settings"
# Headers, CMake package files and link-time symlinks of the -dev packages.
add_tree usr/include/hdf5/serial usr/include/spdlog usr/include/fmt usr/include/yaml-cpp \
         usr/include/CLI usr/include/nlohmann usr/include/openssl usr/include/$arch/openssl \
         usr/include/gtest usr/share/cmake/CLI11 usr/share/cmake/nlohmann_json \
         $L/cmake/spdlog $L/cmake/fmt $L/cmake/yaml-cpp $L/cmake/GTest
# MPI's C API only: not its Fortran, OpenSHMEM or component-development headers.
add $L/openmpi/include/mpi.h $L/openmpi/include/mpi_portable_platform.h \
    $L/openmpi/include/mpi-ext.h
add_tree $L/openmpi/include/openmpi/mpiext
add usr/include/zlib.h usr/include/zconf.h
add "$L/libgtest.a" "$L/libgtest_main.a"  # GoogleTest ships static libraries only
for f in "$stage/usr/share/openmpi/"{help-*.txt,*-wrapper-data.txt,amca-param-sets/*}; do
  [[ -e "$f" ]] && add "${f#"$stage"/}"
done

# Follow NEEDED until closed.
declare -A have_soname=()
index_sonames() {  # the first hit wins: $L, on LD_LIBRARY_PATH, holds symlinks to the others
  local f base
  while IFS= read -r f; do
    base=$(basename "$f")
    [[ -n "${have_soname[$base]:-}" ]] || have_soname[$base]=${f#"$stage"/}
  done < <(for d in "$L" "$L/openmpi/lib" "$L/pmix2/lib"; do
             find "$stage/$d" -maxdepth 1 -name 'lib*.so*' \( -type f -o -type l \) | sort
           done)
}
index_sonames
missing=()
while ((${#elf_queue[@]})); do
  f=${elf_queue[0]}
  elf_queue=("${elf_queue[@]:1}")
  while IFS= read -r soname; do
    [[ "$soname" =~ $base_sonames ]] && continue
    if [[ -n "${have_soname[$soname]:-}" ]]; then
      add "${have_soname[$soname]}"
    else
      missing+=("$soname (needed by $f)")
    fi
  done < <(readelf -d "$stage/$f" 2>/dev/null | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p')
done
((${#missing[@]} == 0)) ||
  die "libraries no bundled package provides: ${missing[*]} (add their package to runtime_roots)"
# Link-time symlinks (libfoo.so -> libfoo.so.N) of the libraries kept, for find_library.
for f in "$stage/$L"/lib*.so "$stage/$L/hdf5/serial"/lib*.so "$stage/$L/openmpi/lib"/lib*.so; do
  [[ -L "$f" ]] || continue
  target=$(in_stage "${f#"$stage"/}")
  [[ -n "$target" && -n "${kept[$target]:-}" ]] && add "${f#"$stage"/}"
done

# --- 4. copy, then make it relocatable ----------------------------------------------------------
(cd "$stage" && printf '%s\0' "${keep[@]}" | xargs -0 cp -a --parents -t "$out")
printf '%s\n' "${keep[@]}" | sort >"$out/FILES"  # what the packages' files became, for tests
# Absolute symlinks (/lib/x86_64-linux-gnu/libz.so.1, ...) -> relative ones inside OUT.
while IFS= read -r link; do
  target=$(readlink "$link")
  [[ "$target" == /* ]] || continue
  [[ "$target" == /lib/$arch/* ]] && target=/$L/${target#/lib/"$arch"/}
  ln -sfn "$(realpath -m --relative-to="$(dirname "$link")" "$out$target")" "$link"
done < <(find "$out" -type l)
# Multiarch headers (openssl/configuration.h) beside the others: only /usr/include gets the
# compiler's implicit multiarch folder, a bundle's include folder does not.
if [[ -d "$out/usr/include/$arch" ]]; then
  cp -a "$out/usr/include/$arch/." "$out/usr/include/"
  rm -rf "${out:?}/usr/include/$arch"
fi
# h5cc (CMake's FindHDF5 compiles a test program with it): its prefix from its own location, not
# /usr; shared libraries by default (the static ones are not bundled); no high-level library.
sed -i -e 's|^prefix="/usr"$|prefix="$(cd "$(dirname "$0")/.." \&\& pwd)"|' \
       -e 's|^STATIC_AVAILABLE="yes"$|STATIC_AVAILABLE="no"|' -e 's|^HL="hl"$|HL=""|' \
  "$out/usr/bin/h5cc"
[[ $(grep -c -e 'dirname "$0"' -e '^STATIC_AVAILABLE="no"$' -e '^HL=""$' "$out/usr/bin/h5cc") == 3 ]] ||
  die "could not adapt h5cc (its prefix, STATIC_AVAILABLE or HL line changed?)"
# The names CMake's FindMPI and users call.
ln -s opal_wrapper "$out/usr/bin/mpicc"
ln -s orterun "$out/usr/bin/mpirun"
ln -s orterun "$out/usr/bin/mpiexec"
# CMake package folders also where non-multiarch CMake (no CMAKE_LIBRARY_ARCHITECTURE) looks.
ln -s "$arch/cmake" "$out/usr/lib/cmake"
# Open MPI's settings (its sysconfdir is /etc/openmpi, which OPAL_PREFIX does not move).
mkdir -p "$out/etc/openmpi"
cat >"$out/etc/openmpi/openmpi-mca-params.conf" <<'EOF'
# fer-dist bundle: the network plugins for UCX, libfabric, PSM and verbs are not bundled.
btl_base_warn_component_unused = 0
btl = self,vader,tcp
EOF
cat >"$out/env.sh" <<EOF
# Source this file (. $out/env.sh): the fer-dist dependency bundle (launch/gpu/bundle-deps.sh)
# first on every search path. Under bash it follows the bundle when the folder has been moved.
FER_BUNDLE='$out'
if [ -n "\${BASH_SOURCE:-}" ]; then FER_BUNDLE=\$(cd "\$(dirname "\${BASH_SOURCE[0]}")" && pwd); fi
export FER_BUNDLE
export PATH="\$FER_BUNDLE/usr/bin\${PATH:+:\$PATH}"
export LD_LIBRARY_PATH="\$FER_BUNDLE/usr/lib/$arch:\$FER_BUNDLE/usr/lib/$arch/openmpi/lib:\$FER_BUNDLE/usr/lib/$arch/hdf5/serial\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export CMAKE_PREFIX_PATH="\$FER_BUNDLE/usr\${CMAKE_PREFIX_PATH:+:\$CMAKE_PREFIX_PATH}"
export CMAKE_LIBRARY_PATH="\$FER_BUNDLE/usr/lib/$arch\${CMAKE_LIBRARY_PATH:+:\$CMAKE_LIBRARY_PATH}"
export HDF5_ROOT="\$FER_BUNDLE/usr"
export MPI_HOME="\$FER_BUNDLE/usr"
export OPAL_PREFIX="\$FER_BUNDLE/usr"
export PMIX_INSTALL_PREFIX="\$FER_BUNDLE/usr/lib/$arch/pmix2"
export OMPI_MCA_mca_base_param_files="\$FER_BUNDLE/etc/openmpi/openmpi-mca-params.conf"
EOF
# The packages the bundle holds files of, with their versions (tests/bundle hides exactly these).
declare -A from_package=()
while read -r p f; do
  [[ -n "$f" && -n "${kept[$f]:-}" ]] && from_package[$p]=1
done <"$stage.contents"
for p in "${!from_package[@]}"; do echo "$p ${version_of[$p]}"; done | sort >"$out/PACKAGES"
((keep_stage)) || rm -rf "$stage" "$stage.contents"

bytes=$(du -sb "$out" | cut -f1)
mib=$(awk -v b="$bytes" 'BEGIN { printf "%.1f", b / 1048576 }')
echo "bundle-deps: $out: $(find "$out" -type f | wc -l) files, $mib MiB, $(($(date +%s) - start)) s"
if ((bytes > max_mib * 1048576)); then
  echo "bundle-deps: the largest files:" >&2
  find "$out" -type f -printf '%s %P\n' | sort -rn | head -n 15 >&2
  die "$mib MiB is over --max-mib $max_mib"
fi
echo "bundle-deps: use it with: . $out/env.sh"
