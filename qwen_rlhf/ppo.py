"""TRL 1.12 的 PPOTrainer 加一层薄子类：补上它悄悄忽略的东西，不复制训练循环。

- 多进程（DDP）时 `model.policy` 不存在（huggingface/trl#2375）：把未包装的 policy / value_model 挂到包装器上。
- `max_grad_norm` 从不裁剪：包一层 optimizer.step，在真正更新参数前裁剪梯度。
- 记录每批 rollout 的"不同回复占比"和平均回复长度（多进程时收齐所有进程的）：看出奖励投机（所有问题都回同一句话）。
- 奖励按回答文本算，由训练奖励模块（rewards.TrainingReward：RM + 规则 / 用户函数 + missing_eos，和 GRPO / RLOO
  同一个）给出，每一项记一条曲线 rewards/<名字>/mean、/std：见 _text_reward。
- 开了梯度检查点时，rollout 生成临时切到 eval：训练模式下每层会丢掉 KV cache，生成既慢又错（见 recording_generate）。
- 可续训的检查点（TRL 的维护者认为 PPO 续训不在范围内，huggingface/trl#2657）：`_save_checkpoint` 存 LoRA 适配器、
  critic、优化器与学习率调度器、计数器、各进程的随机数状态；`resume()` 读回来，`train()` 只跑剩下的更新，
  数据按原来的顺序接着取（见 SkipFirst），TensorBoard 接着原来的步数画。
"""

from __future__ import annotations

import gc
import math
import os
import shutil
import time
from pathlib import Path
from statistics import fmean, mean, stdev

import torch
from accelerate.utils import gather_object
from transformers import TrainerCallback
from transformers.trainer_utils import rotate_checkpoints
from trl.experimental.ppo import PPOTrainer
from trl.experimental.ppo import ppo_trainer as trl_ppo

from . import scoring
from .sampling import generating
from .options import display_path
from .outputs import pause_point, read_json, write_json, writing

RESUME_FILE = "resume.json"  # 检查点里的计数器与"这是哪次运行"的记录
RESUME_DAMAGED = "这个检查点不能用了：--resume_from_checkpoint 换一个更早的检查点，或去掉它重新训练"


class RLHFPPOTrainer(PPOTrainer):
    def __init__(self, *args, train_dataset, run_info: dict, stop, reward, **kwargs):
        # 数据集里每个提示的消息（data.ppo_example）：按提示 token 查回来，RM 渲染整段对话打分（见 _text_reward）；
        # TRL 的 DataCollatorWithPadding 只认 token，这一列交给它之前去掉
        self.prompt_messages = {tuple(ids): m for ids, m in zip(train_dataset["input_ids"], train_dataset["messages"])}
        super().__init__(*args, train_dataset=train_dataset.remove_columns("messages"), **kwargs)
        self.run_info = run_info  # 写进每个检查点：续训时核对选项、数据和 SFT / RM 是不是同一套
        self.stop = stop
        self.reward = reward  # rewards.TrainingReward：和 GRPO / RLOO 同一个训练奖励
        self._reward_terms: dict[str, list[float]] = {}  # 这次更新的 rollout 上每一项的分数（log 时算均值 / 标准差）
        self.resumed: dict | None = None
        self.rollout_tokens, self.rollout_seconds = 0, 0.0
        unwrapped = self.accelerator.unwrap_model(self.model)
        if unwrapped is not self.model:
            # trl#2375: DDP 包装器上没有 .policy；直接写进 __dict__，不注册为子模块（参数已由 DDP 管理）
            self.model.__dict__["policy"] = unwrapped.policy
            self.model.__dict__["value_model"] = unwrapped.value_model
        sampler = self.dataloader.get_sampler()  # accelerate 的 DataLoaderShard：BatchSampler 里真正打乱顺序的那个
        if getattr(sampler, "generator", False) is None:
            # 单进程时 accelerate 不给打乱顺序的采样器单独的随机数发生器（多进程时给，见 accelerate 的
            # prepare_data_loader），它就从全局随机数里取：数据顺序和 rollout 采样搅在一起，续训时无法复现。
            # 和多进程一样给它一个自己的、由 --seed 决定的发生器。
            sampler.generator = torch.Generator().manual_seed(self.args.seed)
        self.optimizer_steps = 0  # 真正执行的优化器更新次数（测试用它核对梯度累积 × minibatch）
        self.last_grad_norm = float("nan")
        self.optimizer.step = self._clipped_step(self.optimizer.step)
        policy = unwrapped.policy
        policy.generate = self._recording_generate(policy.generate)
        self._responses: list[tuple[int, ...]] = []

    # ---------------------------------------------------------------- 梯度裁剪
    def _clipped_step(self, step):
        def clipped_step(*args, **kwargs):
            # accelerate 的优化器在梯度累积未完成时 step 是空操作；只在真正更新时裁剪并计数
            if self.accelerator.sync_gradients:
                if self.args.max_grad_norm and self.args.max_grad_norm > 0:
                    norm = self.accelerator.clip_grad_norm_(self.model.parameters(), self.args.max_grad_norm)
                    self.last_grad_norm = float(norm)
                self.optimizer_steps += 1
            return step(*args, **kwargs)

        return clipped_step

    # ---------------------------------------------------------------- 奖励：训练奖励模块给回答文本打分
    def _text_reward(self, get_reward):
        """TRL 1.12 在 train() 里用 token 算奖励：get_reward(reward_model, 提示 + 截断后的回复, pad, context_length)，
        读在回复最后一个非填充 token（`<|im_end|>`）上。而 RM 在对话模板渲染的文本上训练、读在 `<|im_end|>\\n` 上，
        benchmark 和标准客户端（transformers 的 AutoModelForSequenceClassification + apply_chat_template）也这样打分，
        TRL 自己的 GRPOTrainer / RLOOTrainer 同样先解码再套模板（trl/trainer/grpo_trainer.py 的 _calculate_rewards）。
        所以对奖励模型的那一次调用换成训练奖励模块（rewards.TrainingReward.score），交给它的正是 GRPOTrainer 交给
        reward_funcs 的东西：提示消息（按提示 token 查回）、回答 token（截到第一个 `<|im_end|>`，含它）、它们解码的文本。
        missing_eos 也在模块里扣（train() 期间关掉 TRL 自己那次），PPO、GRPO、RLOO 对同样的回答给同样的奖励。
        critic 的那次调用（逐 token 的价值）照旧。"""
        tok = self.processing_class
        eos, pad = tok.eos_token_id, tok.pad_token_id

        def reward(model, query_responses, pad_token_id, context_length):
            if model is not self.reward_model:
                return get_reward(model, query_responses, pad_token_id, context_length)
            rows = query_responses.tolist()
            prompts = [self.prompt_messages[tuple(t for t in r[:context_length] if t != pad_token_id)] for r in rows]
            ids = [completion_ids(r[context_length:], eos, pad) for r in rows]
            completions = [[{"role": "assistant", "content": text}] for text in tok.batch_decode(ids, skip_special_tokens=True)]
            totals, per_term = self.reward.score(prompts, completions, ids, trainer_state=self.state,
                                                 log_extra=lambda *a, **k: None, log_metric=lambda *a, **k: None)
            for name, values in per_term.items():
                self._reward_terms.setdefault(name, []).extend(values)
            return None, torch.tensor(totals, device=query_responses.device), None

        return reward

    # ---------------------------------------------------------------- rollout 统计
    def _recording_generate(self, generate):
        eos = self.processing_class.eos_token_id

        def recording_generate(*args, **kwargs):
            # PPO 全程在 train 模式：生成时解码层切到 eval，梯度检查点下才看得到上文（见 sampling.generating；
            # TRL 已关掉 dropout，输出不变）
            started = time.perf_counter()
            with generating(self.accelerator.unwrap_model(self.model).policy):
                out = generate(*args, **kwargs)
            context = kwargs["input_ids"].shape[1]
            sequences = out.sequences if hasattr(out, "sequences") else out  # TRL 要 return_dict_in_generate
            self.rollout_seconds += time.perf_counter() - started
            self.rollout_tokens += sequences[:, context:].numel()  # 真正解码的 token（含停下之后的填充位置）
            for row in sequences[:, context:].tolist():
                self._responses.append(tuple(row[: row.index(eos) + 1] if eos in row else row))
            return out

        return recording_generate

    def log(self, logs: dict, *args, **kwargs) -> None:
        # 多进程时每个进程只看到自己那份 rollout：先收齐所有进程的再算（和 TRL 用 gather_for_metrics 算其余指标一样）。
        # TRL 的训练循环每次更新在所有进程上各调用一次 log（trl/experimental/ppo/ppo_trainer.py），收集不会单方面等。
        responses = gather_object(self._responses) if self.accelerator.num_processes > 1 else self._responses
        self._responses = []
        if responses:
            logs["rollout/distinct_ratio"] = len(set(responses)) / len(responses)
            logs["rollout/response_length"] = mean(len(r) for r in responses)
        terms = gather_object([self._reward_terms]) if self.accelerator.num_processes > 1 else [self._reward_terms]
        self._reward_terms = {}
        if any(terms):  # 和 GRPOTrainer 同样的名字：rewards/<项>/mean、/std（不算 None），reward / reward_std = 加权和
            logs.update(reward_logs(terms, self.reward.names, self.reward.weights))
        if self.optimizer_steps:
            logs["policy/grad_norm"] = self.last_grad_norm
        if self.resumed and "eps" in logs:  # TRL 用"累计 episode / 本次运行的秒数"，续训后要减去之前的 episode
            logs["eps"] = int((self.state.episode - self.resumed["episode"]) / (time.perf_counter() - self._train_started))
        super().log(logs, *args, **kwargs)

    # ---------------------------------------------------------------- 可续训的检查点
    def _save_checkpoint(self, model, trial):
        """每 --save_steps 次更新、以及 Ctrl-C / SIGTERM 时调用（TRL 的循环里 should_save 之后）。

        写到 checkpoint-N 旁边的临时文件夹，所有进程写完才改名就位：写到一半被杀，上一个检查点仍然可用。
        正常跑完的最后一次更新不存（马上就要写最终结果）。"""
        if self.state.global_step >= self.state.max_steps and not self.stop.requested:
            return
        if self.is_deepspeed_enabled:  # ZeRO 把优化器状态分在各进程里，这里不处理（开始时已说明，见 train_ppo.py）
            return
        work = Path(self.args.output_dir)
        final, tmp = work / f"checkpoint-{self.state.global_step}", work / f".checkpoint-{self.state.global_step}.tmp"
        started = time.perf_counter()
        if self.accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self._save_rng_state(str(tmp))  # transformers 自己的：python / numpy / torch / CUDA，每个进程一个文件
        if self.accelerator.is_main_process:
            from safetensors.torch import save_model

            with writing(final, tmp):  # 磁盘满等：删掉写了一半的 tmp，一行中文；上一个检查点不动
                unwrapped = self.accelerator.unwrap_model(self.model)
                unwrapped.policy.save_pretrained(str(tmp / "adapter"))
                pause_point(f"ppo-checkpoint-{self.state.global_step}")
                save_model(unwrapped.value_model, str(tmp / "critic.safetensors"))
                torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
                torch.save(self.lr_scheduler.state_dict(), tmp / "scheduler.pt")
                write_json(tmp / RESUME_FILE, {
                    "global_step": self.state.global_step, "episode": self.state.episode,
                    "optimizer_steps": self.optimizer_steps, "max_steps": self.state.max_steps,
                    "num_processes": self.accelerator.num_processes, **self.run_info})
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            tmp.rename(final)
            rotate_checkpoints(str(work), self.args.save_total_limit)
            size = sum(f.stat().st_size for f in final.rglob("*") if f.is_file())
            print(f"[检查点] 第 {self.state.global_step} 次更新：{display_path(final)}（{size / 2**20:.0f} MB，"
                  f"写入 {time.perf_counter() - started:.1f} 秒）", flush=True)

    def resume(self, checkpoint: Path) -> None:
        """读回检查点（在 train() 之前）：权重、优化器、调度器立刻读；计数器要等 TRL 的 train() 把它们清零之后
        （on_train_begin）、随机数状态要等跳过用过的数据之后（SkipFirst）才放回去。"""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file, load_model

        info = read_json(checkpoint / RESUME_FILE, RESUME_DAMAGED)
        unwrapped = self.accelerator.unwrap_model(self.model)
        set_peft_model_state_dict(unwrapped.policy, load_file(str(checkpoint / "adapter" / "adapter_model.safetensors")))
        load_model(unwrapped.value_model, str(checkpoint / "critic.safetensors"))
        # map_location：检查点是主进程从它的卡（cuda:0）上存的；不指定时每个进程都把 critic 的 fp32 Adam 状态（0.6B 约
        # 4.4 GB，见 README）放到 cuda:0 上、并在那里开一个 CUDA 上下文。transformers 的 Trainer 读 optimizer.pt 时也总是指定。
        # CPU 上多进程时 accelerate 的设备是 cpu:<进程号>，torch.load 只认 "cpu"
        device = "cpu" if self.accelerator.device.type == "cpu" else self.accelerator.device
        self.optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", map_location=device, weights_only=True))
        self.lr_scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", map_location=device, weights_only=True))
        self.optimizer_steps = info["optimizer_steps"]
        self.resumed = {"checkpoint": str(checkpoint), **info}
        # 放在最前面：进度条（ProgressCallback）在 on_train_begin 里读 max_steps，要先看到恢复后的值
        self.callback_handler.callbacks.insert(0, _RestoreState(info))

    def train(self):
        done = self.resumed["global_step"] if self.resumed else 0
        total = self.args.num_total_batches
        self.args.num_total_batches = total - done  # TRL 的循环从 1 数到 num_total_batches：只跑剩下的
        train_dataloader = self.dataloader
        restore_rng = (lambda: self._load_rng_state(self.resumed["checkpoint"])) if self.resumed else None
        self.dataloader = SkipFirst(train_dataloader, done, then=restore_rng)
        self._train_started = time.perf_counter()
        # TRL 1.12 每次更新调用两次 gc.collect()；import 和加载留下几十万个对象，每次全量回收约 0.2 秒。
        # freeze 把已有的对象移出回收范围（它们本来也活到结束），之后新建的对象照常回收
        gc.freeze()
        original_get_reward = trl_ppo.get_reward  # TRL 的 train() 从模块里按名字取 get_reward：只在 train() 期间换掉
        trl_ppo.get_reward = self._text_reward(original_get_reward)
        self.reward.bind_rm(self.reward_model)  # TRL 可能已把 RM 换成 DeepSpeed 引擎：打分用它手里的那个
        penalty, self.args.missing_eos_penalty = self.args.missing_eos_penalty, None  # 已在 rewards.MissingEOS 里扣过
        try:
            super().train()
        finally:
            self.args.missing_eos_penalty = penalty
            trl_ppo.get_reward = original_get_reward
            gc.unfreeze()
            self.args.num_total_batches, self.dataloader = total, train_dataloader
            self.train_seconds = time.perf_counter() - self._train_started


def completion_ids(response: list[int], eos: int, pad: int) -> list[int]:
    """PPO 的回复 token（TRL 已把第一个 `<|im_end|>` 之后换成填充）-> GRPOTrainer 交给奖励函数的 completion_ids：
    截到第一个 `<|im_end|>`（含它）；没停下的去掉末尾的填充。"""
    if eos in response:
        return response[: response.index(eos) + 1]
    while response and response[-1] == pad:
        response = response[:-1]
    return response


def reward_logs(parts: list[dict[str, list[float]]], names: list[str], weights: list[float]) -> dict[str, float]:
    """各进程每一项的分数 -> TRL GRPOTrainer 的记法：rewards/<名字>/mean、/std（nanmean / nanstd，标准差用 n-1），
    reward / reward_std = 加权和（None 不计入）。"""
    per_term = {n: [v for p in parts for v in p.get(n, [])] for n in names}
    totals = [sum(w * per_term[n][i] for n, w in zip(names, weights) if not math.isnan(per_term[n][i]))
              for i in range(len(per_term[names[0]]))]
    logs = {}
    for key, values in [*((f"rewards/{n}", v) for n, v in per_term.items()), ("reward", totals)]:
        values = [v for v in values if not math.isnan(v)]
        mean_, std_ = (fmean(values), stdev(values) if len(values) > 1 else 0.0) if values else (math.nan, math.nan)
        if key == "reward":
            logs["reward"], logs["reward_std"] = mean_, std_
        else:
            logs[f"{key}/mean"], logs[f"{key}/std"] = mean_, std_
    return logs


class SkipFirst:
    """续训时跳过已经用过的 done 个 rollout 批次（只取数据，不算模型），之后和没中断时取到完全一样的批次。

    TRL 的 repeat_generator 每个 epoch 重新 iter 一次 DataLoader；打乱顺序来自采样器自己的随机数发生器（由 --seed
    决定，见 RLHFPPOTrainer.__init__），所以从头数过去得到的顺序与原来的运行一致，跨 epoch 也一样。
    跳完之后才调用 then（放回检查点里的随机数状态）：torch 的 DataLoader 每次 iter 都会从全局随机数里取一个种子，
    没中断的运行在检查点之前就取过了，续训时这一次要在放回之前取掉。"""

    def __init__(self, loader, done: int, then=None):
        self.loader, self.skip, self.then = loader, done, then

    def __iter__(self):
        it = iter(self.loader)
        while self.skip > 0:
            try:
                next(it)
                self.skip -= 1
            except StopIteration:
                it = iter(self.loader)
        if self.then is not None:
            self.then()
            self.then = None
        yield from it

    def __len__(self):
        return len(self.loader)


class _RestoreState(TrainerCallback):
    """TRL 的 train() 把 global_step / episode 清零之后，放回检查点里的值（TensorBoard 接着原来的步数画）。"""

    def __init__(self, info: dict):
        self.info = info

    def on_train_begin(self, args, state, control, **kwargs):
        state.global_step, state.episode, state.max_steps = (self.info["global_step"], self.info["episode"],
                                                             self.info["max_steps"])
        if 0 < args.save_steps < 1:  # 按比例给的 save_steps 要按整次运行的更新数算，而不是剩下的
            state.save_steps = math.ceil(state.max_steps * args.save_steps)


def enable_gradient_checkpointing(*models, kwargs: dict | None = None) -> None:
    """PPOTrainer 1.12 从不应用 gradient_checkpointing；在建 trainer 之前对 policy 和 critic 都打开。"""
    for m in models:
        m.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs or {"use_reentrant": False})
        m.config.use_cache = False


def set_mixed_precision(bf16: bool) -> None:
    """PPOTrainer 1.12 建 Accelerator 时不传精度；accelerate 会读这个环境变量（训练前向用 autocast）。"""
    os.environ["ACCELERATE_MIXED_PRECISION"] = "bf16" if bf16 else "no"
