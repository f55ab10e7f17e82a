"""Where ranks run (``gmmkit.parallel.placement``) and how mpirun is told (``gmmkit.parallel.launch``):
hosts flags, hostfiles, SLURM allocations, OpenMPI settings a user made, forwarded variables. No MPI job."""

import os
import shutil
import subprocess

import pytest

from gmmkit.errors import ConfigError
from gmmkit.parallel import launch, network, placement
from gmmkit.parallel.placement import Placement
from gmmkit.study.config import StudyConfig
from gmmkit.study.perfmodel import allreduce_placement


def test_hosts_flag():
    p = placement.parse_hosts("a:2,b,c.example.org:3")
    assert p.hosts == (("a", 2), ("b", 1), ("c.example.org", 3)) and p.slots == 6 and p.source == "hosts"
    assert p.host_of_ranks(4) == ["a", "a", "b", "c.example.org"]  # slot by slot, host by host
    assert placement.parse_hosts("a:1,a:2").hosts == (("a", 3),)
    for bad in ("", "a:0", "a:x", "a:2,,b", "-a", "a b"):
        with pytest.raises(ConfigError) as raised:
            placement.parse_hosts(bad)
        assert raised.value.field == "placement.hosts"


def test_hostfile_in_openmpis_format(tmp_path):
    f = tmp_path / "hosts"
    f.write_text("# the nodes\nnode1 slots=2 max_slots=4\n\nnode2 slots=2   # GPU node\nnode1 slots=1\n")
    p = placement.parse_hostfile(f)
    assert p.hosts == (("node1", 3), ("node2", 2)) and p.source == "hostfile" and p.origin == str(f)
    assert p.describe() == f"node1:3,node2:2 (hostfile {f})"
    assert Placement.from_dict(p.to_dict()) == p


@pytest.mark.parametrize(
    "text,line,says",
    [
        ("node1 slots=2\nnode2\n", 2, "expected HOST slots=N"),
        ("node1 slots=0\n", 1, "slots must be a positive integer"),
        ("node1 slots=two\n", 1, "slots must be a positive integer"),
        ("node1 slots=4 max_slots=2\n", 1, "max_slots=2 is below slots=4"),
        ("node1 slots=1\nroot@node2 slots=1\n", 2, "user@"),
        ("node1 slots=1 cpus=4\n", 1, "expected HOST slots=N [max_slots=M]"),
        ("node_1! slots=1\n", 1, "expected a host name"),
    ],
)
def test_a_bad_hostfile_line_is_named_with_its_file_and_number(tmp_path, text, line, says):
    f = tmp_path / "hosts"
    f.write_text(text)
    with pytest.raises(ConfigError) as raised:
        placement.parse_hostfile(f)
    message = str(raised.value)
    assert raised.value.field == "placement.hostfile" and len(message.splitlines()) == 1
    assert f"{f}, line {line}:" in message and says in message


def test_an_empty_or_missing_hostfile(tmp_path):
    (tmp_path / "empty").write_text("# nothing\n")
    with pytest.raises(ConfigError, match="no hosts"):
        placement.parse_hostfile(tmp_path / "empty")
    with pytest.raises(ConfigError, match="cannot read"):
        placement.parse_hostfile(tmp_path / "missing")


def test_a_slurm_allocation(tmp_path):
    conf = tmp_path / "slurm.conf"  # scontrol reads a configuration even to expand names
    conf.write_text("ClusterName=t\nSlurmctldHost=nowhere\n")
    env = {
        "SLURM_CONF": str(conf),
        "SLURM_JOB_ID": "42",
        "SLURM_JOB_NODELIST": "gpu[01-03],big7",
        "SLURM_TASKS_PER_NODE": "4(x3),2",
        "PATH": "/usr/bin:/bin",
    }
    p = placement.resolve(env=env)
    assert p.hosts == (("gpu01", 4), ("gpu02", 4), ("gpu03", 4), ("big7", 2)) and p.slots == 14
    assert p.describe() == "gpu01:4,gpu02:4,gpu03:4,big7:2 (SLURM job 42)"
    assert placement.from_slurm({**env, "SLURM_NTASKS": "6"}).hosts == (("gpu01", 4), ("gpu02", 2))
    assert placement.resolve(hosts="x:1", env=env).source == "hosts"  # flags win over the allocation
    assert placement.resolve(env={}) is placement.LOCAL
    with pytest.raises(ConfigError, match="2 counts for the 4 nodes"):
        placement.from_slurm({**env, "SLURM_TASKS_PER_NODE": "4,2"})
    # inside an allocation mpirun reads it itself: no host list, only the forwarded variables
    assert "--host" not in launch.placement_args(4, p, {})


@pytest.mark.parametrize(
    "nodelist",
    ["gpu[01-03],big7", "node[1-3,07],gpu01", "rack[1-2]-n[01-02]", "x[8-11]", "solo", "a[001-003,10],b[9-10]"],
)
def test_slurm_host_lists_expand_as_scontrol_expands_them(tmp_path, nodelist):
    scontrol = shutil.which("scontrol")
    if scontrol is None:
        pytest.skip("SLURM's scontrol is not installed (make setup installs slurm-wlm)")
    conf = tmp_path / "slurm.conf"  # scontrol reads a configuration even to expand names
    conf.write_text("ClusterName=t\nSlurmctldHost=nowhere\n")
    reference = subprocess.run(
        [scontrol, "show", "hostnames", nodelist],
        env={"SLURM_CONF": str(conf)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert placement.expand_nodelist(nodelist) == reference


@pytest.mark.parametrize("nodelist", ["a[1-", "a[3-1]", "a[x]", ""])
def test_a_bad_slurm_host_list_is_one_error(nodelist):
    with pytest.raises(ConfigError, match="SLURM_JOB_NODELIST"):
        placement.expand_nodelist(nodelist)


def test_workers_are_checked_against_the_slots():
    p = placement.parse_hosts("a:2,b:2")
    p.check_workers(4)
    with pytest.raises(ConfigError) as raised:
        p.check_workers(5)
    assert raised.value.field == "train.workers" and "at most the 4 slots of a:2,b:2 (--hosts)" in str(raised.value)
    placement.LOCAL.check_workers(1000)  # this machine oversubscribes, as before hosts existed
    assert p.one_per_host(2).hosts == (("a", 1), ("b", 1))
    with pytest.raises(ConfigError, match="at least 2 hosts"):
        placement.parse_hosts("a:8").one_per_host(2)
    with pytest.raises(ConfigError, match="study.max_real: expected at most the 4 slots"):
        StudyConfig(max_real=5, placement=p).validate()
    assert StudyConfig(placement=p).validate().real_limit == 4
    assert StudyConfig.from_dict(StudyConfig(placement=p).to_dict()).placement == p
    # the wall-time model's c is measured across two hosts when there are two (what larger jobs cross)
    assert allreduce_placement(p).hosts == (("a", 1), ("b", 1))
    assert allreduce_placement(placement.parse_hosts("a:4")).hosts == (("a", 4),)
    assert allreduce_placement(placement.LOCAL) is placement.LOCAL


def test_mpirun_gets_the_hosts_and_forwards_what_ranks_need():
    env = {
        "PATH": "/usr/bin",
        "PYTHONPATH": "/src",
        "GMMKIT_CACHE": "/shared/cache",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "HOROVOD_TIMELINE": "/tmp/t.json",
        "CUDA_VISIBLE_DEVICES": "0",
        "SECRET_TOKEN": "x",
    }
    cmd = launch.mpirun_command(3, ["prog"], placement=placement.parse_hosts("a:2,b:2"), env=env)
    assert cmd[1:5] == ["-np", "3", "--host", "a:2,b:2"] and cmd[-1] == "prog"
    forwarded = {cmd[i + 1] for i, word in enumerate(cmd) if word == "-x"}
    assert forwarded == {"PATH", "PYTHONPATH", "GMMKIT_CACHE", "TF_CPP_MIN_LOG_LEVEL", "HOROVOD_TIMELINE"}
    with pytest.raises(ConfigError, match="at most the 4 slots"):
        launch.mpirun_command(5, ["prog"], placement=placement.parse_hosts("a:2,b:2"), env=env)


def test_openmpi_settings_of_the_user_win(tmp_path):
    params = tmp_path / "mca-params.conf"
    params.write_text("# site settings\nhwloc_base_binding_policy = core\noob_tcp_keepalive_time=60\n")
    user = {
        "OMPI_MCA_mca_base_param_files": str(params),
        "OMPI_MCA_mpi_yield_when_idle": "0",
        "OMPI_MCA_plm_rsh_agent": "/site/ssh-wrapper",
        "OMPI_MCA_btl_tcp_if_include": "ib0",
    }
    added = launch.mpi_settings(user)
    assert not {
        "OMPI_MCA_hwloc_base_binding_policy",
        "OMPI_MCA_oob_tcp_keepalive_time",
        "OMPI_MCA_mpi_yield_when_idle",
        "OMPI_MCA_plm_rsh_agent",
        "OMPI_MCA_btl_tcp_if_include",
    } & set(added)
    assert added["OMPI_MCA_oob_tcp_keepalive_intvl"] == "2" and added["OMPI_MCA_rmaps_base_mapping_policy"] == "slot"
    env = launch.mpi_env(user)
    assert env["OMPI_MCA_plm_rsh_agent"] == "/site/ssh-wrapper" and env["OMPI_MCA_btl_tcp_if_include"] == "ib0"
    assert env["OMPI_MCA_mpi_yield_when_idle"] == "0"
    # nothing set anywhere: gmmkit's defaults, among them the keepalive that notices a cut link
    none = launch.mpi_settings({"OMPI_MCA_mca_base_param_files": str(tmp_path / "absent")})
    assert {k[len("OMPI_MCA_") :]: v for k, v in none.items() if k.startswith("OMPI_MCA_")} == launch.MCA_DEFAULTS


def test_mpirun_names_a_lost_host_never_its_ranks():
    said = (
        "--------------------------------------------------------------------------\n"
        "ORTE has lost communication with a remote daemon.\n\n"
        "  HNP daemon   : [[58473,0],0] on node gmk-head\n"
        "  Remote daemon: [[58473,0],2] on node gmk-node1\n\n"
        "This is usually due to either a failure of the TCP network\n"
    )
    hosts = ["gmk-node0", "gmk-node0", "gmk-node1.cluster", "gmk-node1.cluster"]
    assert launch.rank_failure(said, hosts).startswith("host gmk-node1 (ranks 2, 3) was lost")
    assert launch.rank_failure(said).startswith("host gmk-node1 was lost")


def test_a_local_job_talks_over_the_loopback_and_a_host_must_resolve(tmp_path):
    """Every rank here: shared memory between the ranks (no rank opens a TCP port; each listened on 0.0.0.0
    and ::) and mpirun's out-of-band channel on the loopback; the user's own transports win."""
    none = {"OMPI_MCA_mca_base_param_files": "/nonexistent"}
    local = {"OMPI_MCA_btl": "^tcp", "OMPI_MCA_oob_tcp_if_include": "127.0.0.0/8"}
    for where in (placement.LOCAL, placement.parse_hosts("localhost:2"), placement.parse_hosts(os.uname().nodename)):
        assert local.items() <= launch.mpi_settings(none, where).items(), where
    assert "OMPI_MCA_btl" not in launch.mpi_settings(none)  # no placement: no network settings
    mine = launch.mpi_settings({**none, "OMPI_MCA_btl_tcp_if_include": "ib0"}, placement.LOCAL)
    assert "OMPI_MCA_btl" not in mine and "OMPI_MCA_btl_tcp_if_include" not in mine
    assert "OMPI_MCA_btl" not in launch.mpi_settings({**none, "OMPI_MCA_btl": "self,tcp"}, placement.LOCAL)
    site = tmp_path / "openmpi-mca-params.conf"  # Debian's excludes transports: TCP is added to them
    site.write_text("btl = ^uct,openib,ofi\noob_tcp_if_include = eth1\n")
    settings = launch.mpi_settings({"OMPI_MCA_mca_base_param_files": str(site)}, placement.LOCAL)
    assert settings["OMPI_MCA_btl"] == "^uct,openib,ofi,tcp" and "OMPI_MCA_oob_tcp_if_include" not in settings
    network.check_hosts(placement.parse_hosts("localhost:2"))
    with pytest.raises(ConfigError, match=r"host 'no-such-host.invalid' is unknown") as caught:
        network.check_hosts(placement.parse_hosts("localhost:1,no-such-host.invalid:1"))
    assert caught.value.field == "placement.hosts"
