"""Steel Defect Studio web app: the service layer the UI and the CLI share, and the Gradio UI."""
