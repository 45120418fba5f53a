# Shell functions the scripts share: sourced (`. scripts/lib.sh`), never run.
# shellcheck shell=bash

# Debian packages are installed as root, or through sudo when there is one.
sudo_if_needed() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        sudo "$@"
    fi
}

# apt-get install, with one `apt-get update` before the first install of a run.
apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        apt_updated=1
    fi
    sudo_if_needed env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@"
}

# True while process $1 runs. (`kill -0` is not enough: it also succeeds on a child that
# has exited but not yet been reaped.)
alive() {
    local stat
    read -r stat 2>/dev/null <"/proc/$1/stat" || return 1
    stat=${stat##*) }
    [ "${stat%% *}" != Z ]
}
