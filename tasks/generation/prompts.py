"""Prompt texts for the generation strategies, in English and Chinese.

Written for this project (not copied from LongWriter or LongWriter-Zero). Every template is a
plain `str.format` string: a prompt is a deterministic function of the instruction, the config
and earlier step outputs, so the response cache can serve each step again on a restart.

Changing any text here changes what models answer: bump the version of the strategy that uses
it (`tasks.generation.agentwrite`, `tasks.generation.strategies`), which goes into cache keys.
"""

from __future__ import annotations

# ---------------------------------------------------------------------------------------------
# agentwrite: plan
# ---------------------------------------------------------------------------------------------

PLAN = {
    "en": """\
Before writing a long piece, plan it. Break the writing task below into about {n_sections} \
sections (at least {min_sections}, at most {max_sections}) that together cover everything the \
task asks for, in the order they will appear.

Writing task:
<task>
{prompt}
</task>

The finished piece should be about {target_words} words long. Give each section one line, in \
exactly this format:
Paragraph 1 - Main Point: [what this section covers, concretely] - Word Count: [number] words
Paragraph 2 - Main Point: [what this section covers, concretely] - Word Count: [number] words
...

Keep every section between 100 and 1000 words and make the word counts add up to about \
{target_words}. Output only the plan lines, nothing else.""",
    "zh": """\
在动笔写长文之前，请先列出写作计划。把下面的写作任务拆分为大约{n_sections}个部分（至少{min_sections}个，\
最多{max_sections}个），按出现顺序排列，合起来覆盖任务的全部要求。

写作任务：
<task>
{prompt}
</task>

成文总长度约为{target_words}字。每个部分占一行，严格使用以下格式：
段落1 - 主要内容：[这一部分具体写什么] - 字数要求：[数字]字
段落2 - 主要内容：[这一部分具体写什么] - 字数要求：[数字]字
……

每个部分的字数在100到1000字之间，各部分字数之和约为{target_words}字。只输出计划本身，不要输出其他内容。""",
}

PLAN_RETRY = {
    "en": """\
That reply could not be read as a plan. Answer again with only the plan: one line per section, \
at least {min_sections} lines, each exactly like this:
Paragraph 1 - Main Point: [what this section covers] - Word Count: [number] words""",
    "zh": """\
上面的回复无法识别为写作计划。请重新回答，只输出计划：每个部分一行，至少{min_sections}行，每行严格按照以下格式：
段落1 - 主要内容：[这一部分写什么] - 字数要求：[数字]字""",
}

# One rendered plan line; the plan shown to every section call is re-rendered from the parsed
# plan (not the model's raw reply), so fallback and model plans look alike to the writer.
PLAN_LINE = {
    "en": "Paragraph {index} - Main Point: {main_point} - Word Count: {words} words",
    "zh": "段落{index} - 主要内容：{main_point} - 字数要求：{words}字",
}

# ---------------------------------------------------------------------------------------------
# agentwrite: fallback plan (the model's plan could not be parsed)
# ---------------------------------------------------------------------------------------------

FALLBACK_OPENING = {
    "en": "Opening: introduce the subject and set up what the rest of the piece will do, as the task asks",
    "zh": "开篇：引入主题，交代背景，为全文后续内容做好铺垫，符合任务要求",
}
FALLBACK_DEVELOPMENT = {
    "en": "Development {i}: carry the piece forward with the next part of its content, as the task asks",
    "zh": "展开{i}：按照任务要求继续推进下一部分内容",
}
FALLBACK_CONCLUSION = {
    "en": "Conclusion: bring the piece to a satisfying close that fulfils the task",
    "zh": "结尾：收束全文，完整回应写作任务",
}

# ---------------------------------------------------------------------------------------------
# agentwrite: write one section
# ---------------------------------------------------------------------------------------------

SECTION = {
    "en": """\
You are writing a long piece section by section, following a plan.

Writing task:
<task>
{prompt}
</task>

Plan (about {target_words} words in total):
{plan}

Text written so far:
<written>
{written}
</written>

Now write section {index} of {total}: {main_point}
Write about {words} words. Continue naturally from the text so far without repeating it. \
Output only the text of this section: no notes, no word count, no comments on the plan.""",
    "zh": """\
你正在按照写作计划逐段写一篇长文。

写作任务：
<task>
{prompt}
</task>

写作计划（全文约{target_words}字）：
{plan}

已经写好的内容：
<written>
{written}
</written>

现在请写第{index}部分（共{total}部分）：{main_point}
这一部分约{words}字。紧接已写内容自然地往下写，不要重复已写内容。只输出这一部分的正文，不要附加说明、字数或对计划的评论。""",
}

NOTHING_WRITTEN = {"en": "(nothing yet: this is the first section)", "zh": "（尚未开始：这是第一部分）"}
EARLIER_OMITTED = {"en": "[... earlier text omitted ...]", "zh": "[……前文从略……]"}

# ---------------------------------------------------------------------------------------------
# think-then-write
# ---------------------------------------------------------------------------------------------

THINK = {
    "en": """\
Before answering, think the task through: what exactly is asked, who the reader is, the \
structure, tone and length that fit, and how to meet every requirement. Put all of that thinking \
between <think> and </think>. Then, after </think>, write the finished piece itself, complete \
and polished. The reader sees only what comes after </think>.""",
    "zh": """\
回答之前，先把任务想清楚：具体要求是什么、读者是谁、合适的结构、语气和篇幅，以及如何满足每一项要求。\
把这些思考全部写在<think>和</think>之间。然后在</think>之后写出完整、成熟的正文。读者只能看到</think>之后的内容。""",
}
