"""The Streamlit front end of the playground (``streamlit run app/main.py``); all maths is in ``engine``."""
