"""qwen_rlhf：train_sft.py / train_rm.py / train_ppo.py / benchmark.py / chat.py 共用的小模块。"""

import os
import warnings

# 我们有意固定在 trl 1.12.0 并使用 trl.experimental.ppo（最后一个带 PPO 的版本），不必每次都警告它"不稳定"
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
# transformers 5.23 把 gradient_checkpointing* 改名为 activation_checkpointing*。我们自己的代码用新名字；
# 旧名来自库：TRL 1.12 的 SFTConfig / RewardConfig / PPOConfig 仍以 gradient_checkpointing 为字段（有默认值，
# TrainingArguments 的 __post_init__ 因此每次都警告），TRL 的 PPO 包装器与 unwrap_model_for_generation 读
# is_gradient_checkpointing。只过滤这几条改名警告（transformers 5.23.0 / trl 1.12.0 核对过，tests/test_options.py 守着）。
RENAMED_WARNINGS = r"`(is_)?gradient_checkpointing(_kwargs|_enable|_disable)?` is deprecated"
warnings.filterwarnings("ignore", message=RENAMED_WARNINGS, category=FutureWarning)
