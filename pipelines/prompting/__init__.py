"""From an example to a prompt and from an output to an answer: the prompt configuration
(``best.yaml``), Jinja rendering in a sandbox, few-shot selection and output parsing."""

from promptsearch.pipelines import lazy_exports
from promptsearch.pipelines.prompting.fewshot import ORDERS, SELECTORS, select_demos
from promptsearch.pipelines.prompting.parsing import PARSERS, parse_output
from promptsearch.pipelines.prompting.render import render_template, template_fields

__getattr__ = lazy_exports(__name__, {
    "FewShot": "config", "PromptConfig": "config", "demo_pool": "prompts",
    "render_prompt": "prompts", "render_requests": "prompts"})

__all__ = ["ORDERS", "PARSERS", "SELECTORS", "FewShot", "PromptConfig", "demo_pool",
           "parse_output", "render_prompt", "render_requests", "render_template",
           "select_demos", "template_fields"]
