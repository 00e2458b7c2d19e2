"""A local, single-node Apache Kafka broker (KRaft) for ``make run`` and the tests.

The broker's jars come from Maven Central through ``mvn dependency:copy-dependencies``
into a git-ignored cache (``.cache/`` beside the package, or ``STREAMPROC_CACHE_DIR``),
and run with the machine's Java 17. One node is broker and controller at once; internal
topics have replication factor and min ISR 1, so transactions and compacted topics work.

    python -m tests.localkafka up [--port 9092]    # idempotent, waits until it answers
    python -m tests.localkafka down [--port 9092]
    python -m tests.localkafka transactions [--port 9092] -- find-hanging --broker-id 1

``transactions`` is Kafka's own ``kafka-transactions.sh`` (``TransactionsCommand`` of the
``kafka-tools`` jar, fetched with the broker's): it lists, describes and aborts the open
transactions of any cluster, the remedy for a transaction left hanging (see deploy/README).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.4.0"
# Brokers this process started, kept so that stopping one also collects its exit status.
_children: dict[int, subprocess.Popen[bytes]] = {}
LOG4J_VERSION = "2.25.5"

POM = """<?xml version="1.0" encoding="UTF-8"?>
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>dev.streamproc</groupId>
  <artifactId>local-kafka</artifactId>
  <version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka_2.13</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.kafka</groupId>
      <artifactId>kafka-tools</artifactId>
      <version>{kafka}</version>
    </dependency>
    <dependency>
      <groupId>org.apache.logging.log4j</groupId>
      <artifactId>log4j-slf4j-impl</artifactId>
      <version>{log4j}</version>
    </dependency>
  </dependencies>
</project>
"""

LOG4J2 = """status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = {log_file}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.file.ref = file
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""

SERVER_PROPERTIES = """process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:{controller_port}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={data_dir}/logs
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=8
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=8
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
log.cleaner.min.compaction.lag.ms=0
"""


def cache_dir() -> Path:
    configured = os.environ.get("STREAMPROC_CACHE_DIR")
    if configured:
        return Path(configured)
    return Path(__file__).resolve().parent.parent / ".cache"


def libs_dir() -> Path:
    return cache_dir() / f"kafka-{KAFKA_VERSION}" / "libs"


def resolve_jars() -> Path:
    """The folder of the broker's jars, fetched with Maven the first time."""
    libs = libs_dir()
    wanted = (f"kafka_2.13-{KAFKA_VERSION}.jar", f"kafka-tools-{KAFKA_VERSION}.jar")
    if all((libs / jar).exists() for jar in wanted):
        return libs
    shutil.rmtree(libs, ignore_errors=True)  # a cache from before kafka-tools was fetched
    mvn = shutil.which("mvn")
    if mvn is None:
        raise SystemExit("Maven (mvn) is needed to fetch the Kafka broker's jars; install it")
    work = libs.parent
    work.mkdir(parents=True, exist_ok=True)
    pom = work / "pom.xml"
    pom.write_text(POM.format(kafka=KAFKA_VERSION, log4j=LOG4J_VERSION), encoding="utf-8")
    partial = work / "libs.partial"
    shutil.rmtree(partial, ignore_errors=True)
    print(f"fetching Apache Kafka {KAFKA_VERSION} jars with Maven...", file=sys.stderr)
    subprocess.run(
        [
            mvn,
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={partial}",
        ],
        check=True,
    )
    partial.rename(libs)
    return libs


def data_dir(port: int) -> Path:
    return cache_dir() / "kafka-data" / str(port)


def _java() -> str:
    home = os.environ.get("JAVA_HOME")
    if home and (Path(home) / "bin" / "java").exists():
        return str(Path(home) / "bin" / "java")
    java = shutil.which("java")
    if java is None:
        raise SystemExit("Java 17+ is needed to run the Kafka broker; install it")
    return java


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def running_pid(port: int, data: Path | None = None) -> int | None:
    pid_file = (data or data_dir(port)) / "kafka.pid"
    try:
        pid = int(pid_file.read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _pid_alive(pid) else None


async def _answers(bootstrap: str) -> bool:
    from aiokafka.admin import AIOKafkaAdminClient

    client = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        await client.start()
        await client.list_topics()
    except Exception:  # noqa: BLE001 -- any failure means "not ready yet"
        return False
    finally:
        await client.close()
    return True


def wait_ready(
    port: int, timeout_s: float = 90.0, pid: int | None = None, data: Path | None = None
) -> None:
    """Block until the broker answers a metadata request; raise if it died or timed out."""
    deadline = time.monotonic() + timeout_s
    log_file = (data or data_dir(port)) / "server.log"
    while time.monotonic() < deadline:
        if pid is not None and not _pid_alive(pid):
            raise RuntimeError(f"the Kafka broker exited during start; see {log_file}")
        if port_open(port) and asyncio.run(_answers(f"127.0.0.1:{port}")):
            return
        time.sleep(0.5)
    raise TimeoutError(
        f"the Kafka broker on port {port} did not answer within {timeout_s} s; see "
        f"{log_file} (a broker holding many partitions, say from many benchmark runs, "
        "starts slowly: `make clean` gives it a fresh data folder)"
    )


# A second listener, SASL_SSL with SCRAM-SHA-512, when up() is given a secure port: a CA and
# a broker certificate for 127.0.0.1 made with the JDK's keytool, and one SCRAM user
# created as the storage is formatted (KRaft keeps SCRAM credentials in its metadata).
SECURE_PROPERTIES = """listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port},\
CONTROLLER://127.0.0.1:{controller_port}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},SASL_SSL://127.0.0.1:{secure_port}
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=\
org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PKCS12
ssl.keystore.location={keystore}
ssl.keystore.password={store_password}
ssl.key.password={store_password}
"""
SCRAM_USER = "streamproc"


@dataclass(frozen=True)
class Secure:
    """What a client needs for the SASL_SSL listener."""

    port: int
    cafile: Path  # the CA that signed the broker's certificate (PEM)
    username: str
    password: str
    users: dict[str, str]  # the other SCRAM users and their passwords


def make_tls(folder: Path, password: str) -> tuple[Path, Path]:
    """A CA and a broker certificate for 127.0.0.1/localhost, signed by it (keytool):
    the broker's PKCS12 keystore and the CA's PEM."""
    keytool = str(Path(_java()).with_name("keytool"))
    ca_store, keystore, ca_pem = folder / "ca.p12", folder / "broker.p12", folder / "ca.pem"
    for path in (ca_store, keystore, ca_pem):
        path.unlink(missing_ok=True)
    store = ["-storetype", "PKCS12", "-storepass", password, "-keypass", password]
    san = "SAN=ip:127.0.0.1,dns:localhost"

    def tool(*args: str, stdin: bytes | None = None) -> bytes:
        done = subprocess.run([keytool, *args], input=stdin, capture_output=True, check=True)
        return done.stdout

    def keypair(alias: str, name: str, *ext: str) -> None:
        tool("-genkeypair", "-alias", alias, "-keyalg", "RSA", "-keysize", "2048",
             "-validity", "30", "-dname", f"CN={name}", *ext, "-keystore",
             str(ca_store if alias == "ca" else keystore), *store)  # fmt: skip

    keypair("ca", "streamproc test CA", "-ext", "bc:c")
    tool("-exportcert", "-rfc", "-alias", "ca", "-keystore", str(ca_store),
         "-file", str(ca_pem), *store)  # fmt: skip
    keypair("broker", "127.0.0.1", "-ext", san)
    request = tool("-certreq", "-alias", "broker", "-keystore", str(keystore), *store)
    signed = tool(
        "-gencert",
        "-rfc",
        "-alias",
        "ca",
        "-ext",
        san,
        "-validity",
        "30",
        "-keystore",
        str(ca_store),
        *store,
        stdin=request,
    )
    tool(
        "-importcert",
        "-noprompt",
        "-alias",
        "ca",
        "-file",
        str(ca_pem),
        "-keystore",
        str(keystore),
        *store,
    )
    tool("-importcert", "-alias", "broker", "-keystore", str(keystore), *store, stdin=signed)
    return keystore, ca_pem


def up(
    port: int = 9092,
    data: Path | None = None,
    heap: str = "768m",
    secure_port: int | None = None,
    users: Sequence[str] = (),
    authorizer: bool = False,
) -> int:
    """Start the broker on ``port`` unless it already runs; return its pid.

    With ``secure_port``, a SASL_SSL (SCRAM-SHA-512) listener too: see :func:`secure_of`;
    ``users``: more SCRAM users on it; ``authorizer``: Kafka's StandardAuthorizer, so that
    those users may do only what ACLs allow (PLAINTEXT clients and the user ``streamproc``
    are super users; :func:`acls` adds ACLs).
    """
    data = data or data_dir(port)
    pid = running_pid(port, data)
    if pid is not None and port_open(port):
        print(f"Kafka already up on 127.0.0.1:{port} (pid {pid})")
        return pid
    if port_open(port):
        raise SystemExit(f"port {port} is taken by another process; choose another with KAFKA_PORT")
    libs = resolve_jars()
    data.mkdir(parents=True, exist_ok=True)
    controller_port = free_port()
    props = data / "server.properties"
    text = SERVER_PROPERTIES.format(port=port, controller_port=controller_port, data_dir=data)
    scram: list[str] = []
    if secure_port is not None:
        password = uuid.uuid4().hex
        keystore, _ = make_tls(data, password)
        passwords = {user: uuid.uuid4().hex for user in users}
        listener = {
            "port": secure_port,
            "username": SCRAM_USER,
            "password": password,
            "users": passwords,
        }
        (data / "secure.json").write_text(json.dumps(listener), encoding="utf-8")
        secure = SECURE_PROPERTIES.format(
            port=port,
            secure_port=secure_port,
            controller_port=controller_port,
            keystore=keystore,
            store_password=password,
        )
        replaced = {line.split("=", 1)[0] for line in secure.splitlines()}
        kept = [line for line in text.splitlines() if line.split("=", 1)[0] not in replaced]
        text = "\n".join(kept) + "\n" + secure
        scram = [
            arg
            for name, secret in [(SCRAM_USER, password), *passwords.items()]
            for arg in ("--add-scram", f"SCRAM-SHA-512=[name={name},password={secret}]")
        ]
        if authorizer:
            text += (
                "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer\n"
                f"super.users=User:ANONYMOUS;User:{SCRAM_USER}\n"
            )
    props.write_text(text, encoding="utf-8")
    log4j = data / "log4j2.properties"
    log4j.write_text(LOG4J2.format(log_file=data / "server.log"), encoding="utf-8")
    java = _java()
    classpath = f"{libs}/*"
    if not (data / "logs" / "meta.properties").exists():
        cluster_id = "-"
        while cluster_id.startswith("-"):  # as Kafka's own Uuid.randomUuid: not an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        subprocess.run(
            [
                java,
                "-cp",
                classpath,
                f"-Dlog4j2.configurationFile={log4j}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(props),
                *scram,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    with (data / "stdout.log").open("ab") as out:
        proc = subprocess.Popen(
            [
                java,
                "-Xms256m",
                f"-Xmx{heap}",
                "-XX:+UseG1GC",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={log4j}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(props),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _children[proc.pid] = proc
    (data / "kafka.pid").write_text(str(proc.pid))
    try:
        wait_ready(port, pid=proc.pid, data=data)
    except BaseException:
        down(port, data)
        raise
    print(f"Kafka {KAFKA_VERSION} up on 127.0.0.1:{port} (pid {proc.pid}, data in {data})")
    return proc.pid


def secure_of(data: Path) -> Secure | None:
    """The SASL_SSL listener (port, CA, user, password) of a broker started with one."""
    path = data / "secure.json"
    if not path.is_file():
        return None
    listener = json.loads(path.read_text(encoding="utf-8"))
    return Secure(
        listener["port"],
        data / "ca.pem",
        listener["username"],
        listener["password"],
        listener.get("users", {}),
    )


def down(port: int = 9092, data: Path | None = None, timeout_s: float = 30.0) -> None:
    """Stop the broker on ``port`` (SIGTERM, then SIGKILL after ``timeout_s``)."""
    data = data or data_dir(port)
    pid = running_pid(port, data)
    if pid is None:
        print(f"Kafka is not running on port {port}")
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _pid_alive(pid) and time.monotonic() < deadline:
        _reap(pid)
        time.sleep(0.2)
    if _pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        time.sleep(0.5)
        _reap(pid)
    (data / "kafka.pid").unlink(missing_ok=True)
    print(f"Kafka on port {port} stopped")


def _reap(pid: int) -> None:
    # When we started the broker ourselves it is our child: collect it so it is not a zombie.
    proc = _children.get(pid)
    if proc is not None:
        if proc.poll() is not None:
            del _children[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tests.localkafka",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("action", choices=["up", "down", "jars", "transactions"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("KAFKA_PORT", "9092")))
    parser.add_argument(
        "--bootstrap-server", help="for transactions: another cluster (default: the local one)"
    )
    parser.add_argument("tool_args", nargs="*", help="for transactions: the tool's arguments")
    args = parser.parse_args(argv)
    if args.action == "up":
        up(args.port)
    elif args.action == "down":
        down(args.port)
    elif args.action == "transactions":
        bootstrap = args.bootstrap_server or f"127.0.0.1:{args.port}"
        raise SystemExit(transactions(bootstrap, args.tool_args))
    else:
        print(resolve_jars())


def acls(bootstrap: str, tool_args: list[str]) -> None:
    """Kafka's ``kafka-acls.sh`` (``AclCommand``) against ``bootstrap``; fails if it does."""
    classpath = str(resolve_jars() / "*")
    command = [_java(), "-cp", classpath, "org.apache.kafka.tools.AclCommand"]
    subprocess.run(
        [*command, "--bootstrap-server", bootstrap, *tool_args],
        check=True,
        capture_output=True,
    )


def _transactions_command(bootstrap: str, tool_args: list[str]) -> list[str]:
    classpath = str(resolve_jars() / "*")
    command = [_java(), "-cp", classpath, "org.apache.kafka.tools.TransactionsCommand"]
    return [*command, "--bootstrap-server", bootstrap, *tool_args]


def transactions(bootstrap: str, tool_args: list[str]) -> int:
    """Run Kafka's ``kafka-transactions.sh`` against ``bootstrap``; its exit code."""
    return subprocess.call(_transactions_command(bootstrap, tool_args))


def run_transactions(
    bootstrap: str, tool_args: list[str], timeout_s: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """The same, its output captured (for tools that read the tables it prints)."""
    return subprocess.run(
        _transactions_command(bootstrap, tool_args),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


if __name__ == "__main__":
    main()
