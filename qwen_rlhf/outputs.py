"""阶段产物：安全的输出文件夹，以及每个产物里的 stage.json（写、读、认出是哪个阶段的产物）。

输出怎样落盘（一次说清楚，别处只调用）：
1. 训练前 `check_writable(final)`：拿到输出文件夹的锁（`.<结果>.lock`，同一时刻只有一次运行能写它，持有到进程结束），
   修复上次被杀留下的东西，拒绝覆盖已完成的结果（除非 --overwrite_output_dir）。
2. 训练中 Trainer 的可续训检查点写在结果旁边的 `<结果>-trainer-checkpoints/checkpoint-N/`（`trainer_work_dir`），
   从不写进结果文件夹本身；Ctrl-C / SIGTERM 后从这里续训。
3. 训练完先导出到 `<结果>-trainer-checkpoints/export-<pid>/`，再 `StagingDir` 搬进同级的临时文件夹 `.<结果>.tmp-<pid>`，
   最后写 stage.json（"完成证明"），两次改名就位：旧结果 → `.<结果>.old`，临时文件夹 → 结果。
4. 成功后删掉 `<结果>-trainer-checkpoints/`。任何一步被杀，下次 `recover()` 都能回到"旧结果完好"或"新结果完整"。
写的任何一步失败（磁盘满、配额、只读、文件夹被删，不论哪个库抛出）：`writing()` 删掉这次写了一半的东西，报一行中文。
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from datetime import datetime
from pathlib import Path

from .errors import EXIT_BAD_INPUT, EXIT_MISSING, UserError, write_error
from .options import main_process_first
from .paths import ROOT, display_path
from .stages import STAGES

STAGE_FILE = "stage.json"  # 每个阶段写完才有的文件：选项 + 划分指纹 + 来源 + 花费
# 产物的种类就是 stages.STAGES 里的阶段名；"base" 是没有 stage.json 的普通因果语言模型（下载的 Qwen3）。


def _is_nonempty_dir(p: Path) -> bool:
    return p.is_dir() and any(p.iterdir())


# ---------------------------------------------------------------- 安全的输出文件夹


def recover(final: Path) -> None:
    """上次运行被杀留下的东西：在"旧结果移走、新结果还没改名"之间被杀就把旧结果放回原处；
    写到一半的临时文件夹（进程已不在）直接删掉，免得占满租来的磁盘。"""
    old = final.parent / f".{final.name}.old"
    if old.is_dir() and not final.exists():
        old.rename(final)
        print(f"[输出] 发现上次替换 {display_path(final)} 时被中断，已恢复原来的结果。")
    elif old.is_dir():
        shutil.rmtree(old, ignore_errors=True)
    # 临时文件夹和导出文件夹都以写它的进程号结尾；进程已不在就是被杀留下的
    for tmp in [*final.parent.glob(f".{final.name}.tmp-*"), *trainer_work_dir(final).glob("export-*")]:
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_LOCKS: dict[Path, int] = {}  # 本进程持有的输出文件夹锁：文件夹 -> 锁文件的描述符


def lock_output(final: Path) -> None:
    """输出文件夹同一时刻只属于一次运行：`.<结果>.lock` 上的 flock（内核的锁，持有它的进程一死就自动释放，
    被 kill -9 的运行不会挡住下一次）。另一次还活着的运行正持有它时立即拒绝，说出它是谁。

    不用 filelock 包：它每次尝试加锁都以 O_TRUNC 打开锁文件，没拿到锁的一方会清掉持有者写在里面的进程号和开始时间。
    多进程（accelerate launch）时只由主进程调用：锁属于这次运行，不属于每个进程。"""
    final = Path(final)
    if final in _LOCKS:
        return
    final.parent.mkdir(parents=True, exist_ok=True)
    lock = final.parent / f".{final.name}.lock"
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise write_error(e, display_path(lock), cleaned=False) or e from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").split()
        os.close(fd)
        who = f"进程 {holder[0]}，开始于 {' '.join(holder[1:3])}" if len(holder) >= 3 else "进程信息未知"
        raise UserError(f"输出文件夹 {display_path(final)} 正被另一次运行写入（{who}），本次没有运行。"
                        "等它结束，或换一个 --output_dir。", EXIT_BAD_INPUT) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {datetime.now().isoformat(sep=' ', timespec='seconds')}\n".encode(), 0)
    _LOCKS[final] = fd


def release_locks() -> None:
    """交还本进程持有的输出文件夹锁（errors.run 在脚本结束时调用；进程退出时内核也会交还）。锁文件留着：
    删掉它会让同时等锁的两次运行各拿到一个不同文件上的锁。"""
    while _LOCKS:
        os.close(_LOCKS.popitem()[1])


def is_main_process() -> bool:
    """accelerate launch 多进程时 RANK 0 是主进程；单进程没有 RANK。不初始化分布式。"""
    return int(os.environ.get("RANK", "0")) == 0


def check_writable(final: Path, overwrite: bool) -> None:
    """在加载任何模型之前检查，免得训练几十分钟后才发现不能写。主进程先拿到输出文件夹的锁（见 lock_output）。"""
    if is_main_process():
        lock_output(final)
    with main_process_first():  # 多进程时只让主进程改名 / 删除，免得几个进程同时搬同一个文件夹
        recover(final)
    if final.exists() and not final.is_dir():
        raise UserError(f"输出路径 {display_path(final)} 是一个文件，不是文件夹。请换一个 --output_dir。")
    if _is_nonempty_dir(final) and not overwrite:
        raise UserError(
            f"输出文件夹 {display_path(final)} 已存在且非空，为避免覆盖已完成的结果，本次没有运行。"
            "换一个 --output_dir，或加 --overwrite_output_dir true 覆盖它。"
        )


def trainer_work_dir(final: Path) -> Path:
    """Trainer 的中间检查点（可续训）放在结果旁边的独立文件夹，训练成功后删除以省磁盘。"""
    return final.parent / f"{final.name}-trainer-checkpoints"


@contextlib.contextmanager
def writing(where: Path, *partial: Path):
    """包住一段写文件的代码：失败（磁盘满、配额、只读、文件夹被删，OSError / safetensors 的 SafetensorError /
    torch.save 的 RuntimeError 都算）时删掉 partial（这次写了一半的文件夹），报一行中文；别的错误原样抛出。"""
    try:
        yield
    except BaseException as e:
        for p in partial:
            shutil.rmtree(p, ignore_errors=True)
        if isinstance(e, Exception) and (err := write_error(e, display_path(where))) is not None:
            raise err from None
        raise


class StagingDir:
    """`with StagingDir(final) as tmp:` 在 tmp 里写；只有 with 块正常结束才替换 final。写失败时报一行中文
    （见 writing），临时文件夹删掉，之前的结果不动。"""

    def __init__(self, final: Path):
        self.final = final
        self.tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"

    def __enter__(self) -> Path:
        with writing(self.final, self.tmp):
            self.final.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp.mkdir()
        return self.tmp

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            if issubclass(exc_type, Exception) and (err := write_error(exc, display_path(self.final))) is not None:
                raise err from None
            return False
        with writing(self.final, self.tmp):
            old = self.final.parent / f".{self.final.name}.old"
            shutil.rmtree(old, ignore_errors=True)
            if self.final.exists():
                self.final.rename(old)  # 两次 rename 之间被杀：下次 recover() 会把 old 放回去
            try:
                self.tmp.rename(self.final)
            except BaseException:
                if old.exists() and not self.final.exists():
                    old.rename(self.final)  # 放回原来的结果
                raise
            shutil.rmtree(old, ignore_errors=True)
        return False


PAUSE_ENV = "QWEN_RLHF_TEST_PAUSE_AT"


def pause_point(name: str) -> None:
    """测试用的钩子：环境变量 QWEN_RLHF_TEST_PAUSE_AT 等于 name 时，在这里打印一行 `[pause] name` 然后停住，
    直到被杀。测试等到这一行再 SIGKILL，就准确地杀在"写到一半"的那一刻，不用轮询文件夹去抢时间。"""
    if os.environ.get(PAUSE_ENV) == name:
        print(f"[pause] {name}", flush=True)
        threading.Event().wait()


# ---------------------------------------------------------------- stage.json


def write_stage_info(folder: Path, stage: str, options: dict, **extra) -> None:
    """阶段产物的"完成证明"：用了哪些选项、数据划分指纹、来源路径、花费。最后写，保证有它就说明写完了。"""
    info = {"stage": stage, "created": datetime.now().isoformat(timespec="seconds"), **extra, "options": options}
    write_json(folder / STAGE_FILE, info)


def write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=2, default=str), encoding="utf-8")


def read_json(path: Path, what: str) -> dict:
    """读我们自己（或 transformers / peft）写的元数据文件：stage.json、resume.json、adapter_config.json、config.json……
    文件坏了（截短、乱码、不是 JSON 对象）时一行中文说出是哪个文件、该怎么办，而不是 JSONDecodeError 的 traceback。
    what：这个文件是什么、坏了怎么办（"重新运行 python train_sft.py"）。"""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        data = None
    if not isinstance(data, dict):
        raise UserError(f"{display_path(path)} 已损坏（不是完整的 JSON 对象，可能拷贝中断或被手动改坏）；{what}。", EXIT_MISSING)
    return data


def _redo(folder: Path) -> str:
    """元数据坏了时该做什么：能认出是哪个阶段就说重新运行哪个脚本。"""
    return f"这个文件夹（{display_path(folder)}）需要重新生成：重新运行产生它的脚本，或重新拷贝它"


def stage_info(folder: Path) -> dict | None:
    """folder 的 stage.json；PPO 的 merged/ 读上一级的；没有就是 None。"""
    for f in (folder / STAGE_FILE, folder.parent / STAGE_FILE if folder.name == "merged" else None):
        if f is not None and f.is_file():
            return read_json(f, _redo(f.parent))
    return None


def kind_of(folder: Path) -> str | None:
    """认出一个文件夹是哪种产物：sft / rm / ppo（看 stage.json），或 base（普通因果语言模型的 config.json）。
    认不出（半成品、不是模型）返回 None。"""
    info = stage_info(folder)
    if info is not None:
        return info.get("stage")
    config = folder / "config.json"
    if not config.is_file():
        return None
    architectures = read_json(config, _redo(folder)).get("architectures") or []
    if any(a.endswith("ForSequenceClassification") for a in architectures):
        return "rm"  # 没有 stage.json 的打分模型：只能当 RM 看，绝不能当对话模型
    return "base"


def check_kind(folder: Path, expected: tuple[str, ...], option: str) -> dict | None:
    """所有读产物的脚本都用这一个检查：folder 必须是 expected 里的一种，否则一行中文说清楚要的是什么。
    返回 stage.json（base 模型没有，返回 None）。"""
    wanted = " / ".join(STAGES[k].label for k in expected)
    scripts = "、".join(STAGES[k].command for k in expected if k != "base")
    if not folder.is_dir():
        raise UserError(f"{option} 指向的 {display_path(folder)} 不存在；这里需要{wanted}。"
                        + (f"请先运行 {scripts}。" if scripts else ""), EXIT_MISSING)
    kind = kind_of(folder)
    if kind is None:
        raise UserError(f"{display_path(folder)} 不完整（没有 {STAGE_FILE} 也没有 config.json，可能训练中途被打断或没拷完）；"
                        f"{option} 需要{wanted}。" + (f"请重新运行 {scripts}。" if scripts else ""), EXIT_MISSING)
    if kind not in expected:
        name = STAGES[kind].label if kind in STAGES else f"{kind} 阶段的产物"
        raise UserError(f"{display_path(folder)} 是{name}，{option} 需要{wanted}。请检查路径"
                        + (f"，或先运行 {scripts}。" if scripts else "。"), EXIT_MISSING)
    return stage_info(folder)


def check_reward_model(folder: Path, option: str = "--reward_model_path") -> dict | None:
    """RL 训练要优化的奖励：必须是 RM，而且不能是金标准评委或空评委（train_rm.py --role gold / null）。它们只用来评测，
    策略一旦对着它训练，它就不再是独立的第二意见。"""
    info = check_kind(folder, ("rm",), option)
    role = (info or {}).get("role")
    if role in ("gold", "null"):
        who = "金标准评委" if role == "gold" else "空评委"
        raise UserError(f"{display_path(folder)} 是{who}（python train_rm.py --role {role} 训练的），只用来评测；{option} 需要代理 RM"
                        "（python train_rm.py 的产物，例如 checkpoint/rm）。", EXIT_MISSING)
    return info


def check_same_split(infos: dict[str, dict | None], fingerprint: str, script: str) -> None:
    """划分一致的唯一规则：有 stage.json 的产物（sft / rm / ppo）必须和这次的数据 + 划分指纹相同；
    没有 stage.json 的（基座模型）没有划分可比。"""
    for name, info in infos.items():
        if info is not None and info.get("split_fingerprint") != fingerprint:
            raise UserError(
                f"{name} 训练时用的数据或划分和这次不同（--dataset 的内容 / --split_seed / --test_size 不一致），"
                f"留出的问题可能被训练过。请用与训练时相同的选项运行 {script}。", EXIT_MISSING)


def tensorboard_dir(stage: str, final: Path | None = None) -> Path:
    """TensorBoard 目录 tensorboard/<阶段>/<时间>[-<结果文件夹名>]/；transformers 5 去掉了 logging_dir，只认这个环境变量。
    结果文件夹不叫阶段名时（compare.sh 的 grpo-seed1 …）把它加在后面：同一秒开始的几次运行（compare.sh 同时跑两个）
    各有各的目录，TensorBoard 里也看得出哪条曲线是哪次运行。

    根目录可用环境变量 QWEN_RLHF_TENSORBOARD_ROOT 改（测试用它把曲线写到临时目录）。
    """
    root = Path(os.environ.get("QWEN_RLHF_TENSORBOARD_ROOT", ROOT / "tensorboard"))
    name = time.strftime("%Y%m%d-%H%M%S") + (f"-{final.name}" if final is not None and final.name != stage else "")
    path = root / stage / name
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(path)
    return path
