"""Action plugin: the redflag_agent role's preflight, inputs checked on the controller.

The input rules (plugin_utils/redflag_agent_inputs.py) run here, with no round trip. Then
the role's one read-only shell probe runs on the host, as ansible.builtin.raw would run it,
told whether it may install python3 (only when every input check passed, never in check
mode); then the host rules judge what it found. The task fails with every message at once,
and a probe that fails is quoted with the host's stderr and the next step.
"""

from __future__ import annotations

from ansible import constants as C
from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.plugins.action import ActionBase
from ansible_collections.redflag.agent.plugins.plugin_utils import redflag_agent_inputs as rules

# Values the rules judge stay raw: their messages quote them as given.
ARGUMENT_SPEC = {
    "probe": {"type": "str", "required": True},
    "state": {"type": "raw", "default": "present"},
    "server_url": {"type": "raw", "default": ""},
    "check_in_interval": {"type": "raw", "default": 300},
    "version": {"type": "raw", "default": ""},
    "artifact": {"type": "raw", "default": ""},
    "resolved_version": {"type": "raw", "default": ""},
    "source_dir": {"type": "raw", "default": ""},
    "keep_versions": {"type": "raw", "default": 2},
    "require_token": {"type": "bool", "default": False},
    "force_reregister": {"type": "bool", "default": False},
    "token_given": {"type": "bool", "default": False},
    "rollback": {"type": "bool", "default": False},
    "python": {"type": "raw", "default": ""},
    "install_python": {"type": "bool", "default": True},
}


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(ARGUMENT_SPEC)

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp  # unused: the probe needs no temporary files
        args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)[1]
        probe_script = args.pop("probe")
        inputs = rules.Inputs(check_mode=bool(self._task.check_mode), **args)

        errors = rules.input_errors(inputs)
        install = rules.may_install_python(inputs, errors)
        # The probe reads install_python (0/1) to decide; the rest of it is the template.
        error = ""
        try:
            res = self._low_level_execute_command(
                f"install_python={int(install)}\n{probe_script}", executable="/bin/sh")
        except AnsibleConnectionFailure:
            raise  # unreachable stays unreachable
        except AnsibleError as e:
            # e.g. become failed on the local connection; its message quotes the host's stderr
            res, error = {"rc": -1}, str(getattr(e, "message", e))
        stdout, stderr, rc = res.get("stdout", ""), res.get("stderr", ""), res.get("rc", 0)
        probed = rules.parse_probe(stdout)
        become = self._connection.become  # the become plugin, None without become
        probe = rules.Probe(
            rc=rc, probed=probed, stderr=stderr, error=error, become=self._became(),
            become_method=become.name.split(".")[-1] if become else "sudo",
            become_user=self.get_become_option("become_user") if become else "root")

        result.update(
            rc=rc, stdout=stdout, stdout_lines=stdout.splitlines(), stderr=stderr,
            stderr_lines=stderr.splitlines(), probed=probed, python_ok=rules.python_ok(probed),
            input_errors=errors, changed="python_installed=1" in stdout.splitlines(),
        )
        messages = rules.preflight_errors(inputs, probe)
        if messages:
            result.update(failed=True, msg=" | ".join(messages))
        return result

    def _became(self):
        """Whether _low_level_execute_command wrapped the probe in become (its own test)."""
        if not self._connection.become:
            return False
        ruser, buser = self._get_remote_user(), self.get_become_option("become_user")
        return bool(C.BECOME_ALLOW_SAME_USER or buser != ruser or not any((ruser, buser)))
