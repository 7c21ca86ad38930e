//! The four personas: what each asks of the agent. The one place they are defined.

use baton_shared::Persona;

/// What a persona sends with its tasks.
#[derive(Debug, Clone, Copy)]
pub struct PersonaDef {
    /// The system prompt appended for executors that take one.
    pub system_prompt: &'static str,
    /// Tools the executor may use.
    pub allowed_tools: &'static [&'static str],
}

/// The definition of a persona.
pub fn definition(persona: Persona) -> PersonaDef {
    match persona {
        Persona::Code => PersonaDef {
            system_prompt: "You are a careful software engineer working in this repository. Make the change asked for, keep it small, run the relevant tests, and finish with a short summary of what you changed and how you checked it.",
            allowed_tools: &[
                "Read",
                "Edit",
                "MultiEdit",
                "Write",
                "Glob",
                "Grep",
                "Bash",
                "TodoWrite",
            ],
        },
        Persona::Review => PersonaDef {
            system_prompt: "You are a code reviewer. Read the code asked about and report concrete problems (bugs, risks, missing tests) with file and line references, most important first. Do not change any file.",
            allowed_tools: &[
                "Read",
                "Glob",
                "Grep",
                "Bash(git diff:*)",
                "Bash(git log:*)",
                "Bash(git show:*)",
            ],
        },
        Persona::Plan => PersonaDef {
            system_prompt: "You are a technical planner. Study the repository and write a step-by-step plan for the request: the files involved, the order of changes, the risks and how to test. Do not change any file.",
            allowed_tools: &["Read", "Glob", "Grep", "TodoWrite"],
        },
        Persona::Ops => PersonaDef {
            system_prompt: "You are an operations engineer. Inspect the system as asked, run only safe, read-mostly commands unless the request clearly asks for a change, and report what you found and did.",
            allowed_tools: &["Read", "Glob", "Grep", "Bash"],
        },
    }
}
