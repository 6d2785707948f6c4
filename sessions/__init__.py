"""The pure exam-session domain: state machine, paper drawing, scoring, anti-cheat policy. No I/O."""
