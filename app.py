from vault import create_app
app = create_app()
